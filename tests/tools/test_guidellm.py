"""GuideLLM, the usual benchmark of OpenAI-compatible servers, runs against an edge unchanged: streaming chat
completions with `ignore_eos`, `continuous_usage_stats` and the shipped model's tokenizer, and no request fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgesplit.procs import free_port, serve, wait_healthy
from splitcore.defaults import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.e2e
MODEL = Path(__file__).resolve().parents[2] / DEFAULT_MODEL_DIR


def guidellm_command(url: str, model_dir: Path, out: Path, streams: int, requests: int, prompt_tokens: int = 64,
                     output_tokens: int = 32) -> list[str]:
    """The GuideLLM 0.8 command line README gives, for `requests` requests over `streams` concurrent streams."""
    exe = shutil.which("guidellm", path=str(Path(sys.executable).parent)) or "guidellm"
    return [exe, "run", "--backend", f"kind=openai_http,target={url}",
            "--profile", f"kind=concurrent,streams={streams}",
            "--data", f"kind=synthetic_text,prompt_tokens={prompt_tokens},output_tokens={output_tokens}",
            "--tokenizer", f"kind=huggingface_auto,model={model_dir}",
            "--constraint", f"kind=max_requests,count={requests}",
            "--output", f"kind=json,path={out}", "--disable-console-interactive"]


def test_guidellm_runs_against_the_edge_with_no_failed_request(tmp_path: Path) -> None:
    cloud_port, edge_port = free_port(), free_port()
    with serve("cloud", ["--model", str(MODEL)], cloud_port, tmp_path / "cloud.log") as cloud, \
            serve("edge", ["--model", str(MODEL), "--cloud", f"http://127.0.0.1:{cloud_port}", "--cut", "2:6",
                           "--codec", "int8"], edge_port, tmp_path / "edge.log") as edge:
        wait_healthy(f"http://127.0.0.1:{cloud_port}/health", cloud)
        wait_healthy(f"http://127.0.0.1:{edge_port}/health", edge)
        out = tmp_path / "guidellm.json"
        run = subprocess.run(guidellm_command(f"http://127.0.0.1:{edge_port}", MODEL, out, streams=2, requests=8),
                             capture_output=True, text=True, timeout=600, cwd=tmp_path,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (benchmark,) = json.loads(out.read_text())["benchmarks"]
    made = benchmark["scheduler_metrics"]["requests_made"]
    assert made["errored"] == 0 and made["incomplete"] == 0 and made["successful"] == 8
    assert " 400 " not in (tmp_path / "edge.log").read_text()

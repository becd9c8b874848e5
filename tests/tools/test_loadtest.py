"""The load-test tool against real tiers, and the link benchmark end to end on a tiny model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edgesplit.procs import free_port
from edgesplit.tools import linkbench, loadtest
from edgesplit.tools.loadgen import Stage, run_stage, summarise
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.testing import tiny_config

pytestmark = pytest.mark.e2e  # spawns processes, drives a browser or fuzzes: out of the fast loop (-m 'not e2e')

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / DEFAULT_MODEL_DIR


def test_concurrent_identical_greedy_requests_all_equal_the_unsplit_model(tmp_path: Path) -> None:
    """As TGI's load tests assert: 8 clients at once, one prompt, every output the unsplit model's."""
    out = tmp_path / "closed.json"
    loadtest.main(["--spawn", "--cut", "2:6", "--concurrency", "8", "--duration-s", "120", "--max-requests", "24",
                   "--same-prompt", "--reference", str(MODEL), "--prompt-tokens", "24", "--output-tokens", "24",
                   "--out", str(out)])
    report = json.loads(out.read_text())
    stage = report["stages"][0]
    assert (stage["completed"], stage["failed"]) == (24, 0), stage["errors"]
    assert stage["mismatched_outputs"] == 0 and stage["distinct_outputs"] == 1
    assert stage["output_tokens"] == 24 * 24
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert 0 < stage[key]["p50"] <= stage[key]["p90"] <= stage[key]["p99"]
    assert stage["ttft_ms"]["p50"] < stage["e2e_ms"]["p50"]
    assert set(report["memory_summary"]) == {"edge", "cloud"}
    assert all(m["edge"] and m["cloud"] for m in report["memory"])
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_open_loop_arrivals_follow_the_rate_and_errors_are_counted_by_kind(tmp_path: Path) -> None:
    out = tmp_path / "open.json"
    loadtest.main(["--spawn", "--mode", "open", "--rate", "4", "--duration-s", "4", "--output-tokens", "8",
                   "--out", str(out)])
    stage = json.loads(out.read_text())["stages"][0]
    assert stage["failed"] == 0 and 6 <= stage["completed"] <= 30  # Poisson, 4/s for 4 s
    nobody = Stage(mode="open", concurrency=0, rate=20, arrivals="constant", duration_s=0.5, max_requests=100,
                   prompt_tokens=4, output_tokens=4)
    sent, wall = asyncio.run(run_stage(f"http://127.0.0.1:{free_port()}", nobody))
    summary = summarise(sent, wall)
    assert summary["completed"] == 0 and summary["failed"] == len(sent)
    assert 9 <= len(sent) <= 11  # one every 50 ms for 0.5 s
    assert list(summary["errors"]) == ["connection: ConnectError"]


def test_the_link_benchmark_measures_every_cut_and_the_chosen_plan(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linkbench, "model_configs", lambda: {"tiny": tiny_config("gpt2", 384, layers=3, hidden=64)})
    out = tmp_path / "links.json"
    linkbench.main(["--models", "tiny", "--links", "Wi-Fi", "--streams", "2", "--prompt", "8", "--tokens", "3",
                    "--rounds", "1", "--confirm", "1", "--every-cut", "--out", str(out)])
    model = json.loads(out.read_text())["models"][0]
    link = model["links"][0]
    assert set(link["plans"]) == {"cloud", "1", "2", "edge"}
    assert link["estimated"]["rtt_ms"] > 5  # the edge saw the emulated 10 ms
    assert link["chosen_vs_best"] == link["chosen"]["total_ms"] / link["best_confirmed"]["total_ms"]
    assert link["chosen"]["predicted"]["total_ms"] > 0
    assert (tmp_path / "links-tiny.png").stat().st_size > 10_000

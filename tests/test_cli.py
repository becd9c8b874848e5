"""The command line: clear refusals, and the demo running both tiers as real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from splitcore.loading import LoadedModel
from splitcore.testing import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(models: dict[str, LoadedModel], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(models["gpt2"], tmp_path_factory.mktemp("ckpt") / "tiny-gpt2")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgesplit.cli", *args], capture_output=True, text=True, timeout=300)


def test_a_plan_that_sends_tokens_off_device_needs_permission(checkpoint: Path) -> None:
    result = run("serve", "edge", "--model", str(checkpoint), "--cut", "cloud")
    assert result.returncode == 2
    assert "allow-tokens-off-device" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_cut_and_a_missing_model_are_one_line_errors(checkpoint: Path, tmp_path: Path) -> None:
    bad_cut = run("serve", "edge", "--model", str(checkpoint), "--cut", "3:1")
    assert bad_cut.returncode == 2 and "a <= b" in bad_cut.stderr
    missing = run("serve", "cloud", "--model", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no config.json" in missing.stderr


def test_the_demo_streams_a_generation_across_two_processes(checkpoint: Path) -> None:
    result = run("demo", "--model", str(checkpoint), "--max-tokens", "8", "--cut", "1:3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "edge [0, 1) -> cloud [1, 3) -> edge [3, 4)" in result.stdout
    assert "bytes up" in result.stdout and "raw fp32 hidden state: 256 bytes" in result.stdout

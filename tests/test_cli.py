"""The command line: clear refusals, and the demo running both tiers as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitcore.loading import LoadedModel
from splitcore.openmp import IDLE_SPIN
from splitcore.testing import save_checkpoint

pytestmark = pytest.mark.e2e  # spawns processes, drives a browser or fuzzes: out of the fast loop (-m 'not e2e')


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


def test_profile_then_plan_from_the_command_line(checkpoint: Path, tmp_path: Path) -> None:
    import json

    edge = run("profile", "--model", str(checkpoint), "--device-name", "edge", "--threads", "1", "--repeats", "2",
               "--out", str(tmp_path / "edge.json"))
    assert edge.returncode == 0, edge.stderr
    cloud = run("profile", "--model", str(checkpoint), "--device-name", "cloud", "--repeats", "2",
                "--out", str(tmp_path / "cloud.json"))
    assert cloud.returncode == 0 and "wrote" in cloud.stdout
    args = ["plan", "--model", str(checkpoint), "--edge-profile", str(tmp_path / "edge.json"),
            "--cloud-profile", str(tmp_path / "cloud.json"), "--bandwidth", "10mbit", "--rtt", "40ms",
            "--workload", "64:16", "--min-edge-layers", "1"]
    human = run(*args)
    assert human.returncode == 0, human.stderr
    assert "chosen" in human.stdout and "edge-only" in human.stdout and "best single cut" in human.stdout
    answer = json.loads(run(*args, "--json").stdout)
    assert answer["cut"][0] >= 1 or answer["cut"] == [4, 4]
    assert {"time_to_first_token_ms", "time_per_output_token_ms", "edge_memory_bytes", "bytes_per_token"} <= set(answer)
    tight = run(*args, "--edge-memory-mb", "0.01")
    assert tight.returncode == 2 and "device memory budget" in tight.stderr


def test_a_certificate_without_its_key_is_refused_before_serving(capsys: pytest.CaptureFixture[str]) -> None:
    from edgesplit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "cloud", "--ssl-certfile", "cloud.pem", "--port", "1"])
    assert exit_.value.code == 2 and "--ssl-certfile needs --ssl-keyfile" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "says"), [
    (["--layers", "2:6"], "--ray replicas hold every block"),
    (["--ssl-certfile", "cloud.pem", "--ssl-keyfile", "cloud.key"], "terminate TLS in front of it"),
])
def test_a_replicated_cloud_refuses_what_it_cannot_honour_before_starting_ray(
        flags: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    from edgesplit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "cloud", "--ray", *flags, "--port", "1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("flags", "says"), [
    (["--bandwidth", "fast"], "'fast' is not a bandwidth"),
    (["--rtt", "soon"], "'soon' is not a duration"),
    (["--bandwidth", "0mbit"], "must be more than 0"),
    (["--edge-profile", "missing.json"], "cannot be read"),
    (["--edge-profile", "README.md"], "is not a profile"),
    (["--cloud-profile", "pyproject.toml"], "is not a profile"),
    (["--workload", "lots"], "workload"),
])
def test_plan_answers_bad_input_with_one_line_and_exit_2(flags: list[str], says: str) -> None:
    root = Path(__file__).resolve().parents[1]
    given = {"--edge-profile": str(root / "profiles/edge-1thread-default.json"),
             "--cloud-profile": str(root / "profiles/cloud-default.json"), "--bandwidth": "10mbit", "--rtt": "20ms"}
    given |= dict(zip(flags[::2], flags[1::2], strict=True))
    result = subprocess.run([sys.executable, "-m", "edgesplit.cli", "plan", *[x for kv in given.items() for x in kv]],
                            capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("operator", "spin"), [({}, str(IDLE_SPIN)), ({"GOMP_SPINCOUNT": "1000"}, "1000")])
def test_a_tier_s_openmp_threads_sleep_when_idle_unless_the_operator_says_otherwise(operator: dict[str, str],
                                                                                     spin: str) -> None:
    # libgomp reads its spin once, when torch loads it: the command must set it before any import does. Set too
    # late (in `main`), every worker spun 300,000 pauses after each parallel region, on the cores the other tier uses.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env |= {"OMP_DISPLAY_ENV": "verbose", **operator}  # libgomp prints what it read when it loads
    result = subprocess.run([sys.executable, "-c", "import edgesplit.cli, torch; torch.ones(1)"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"GOMP_SPINCOUNT = '{spin}'" in result.stderr

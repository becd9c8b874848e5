"""A plain `pip install` works: installed outside the checkout, both tiers serve the shipped model with no
`--model`, and a model in the local Hugging Face cache is found by its hub id or snapshot directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from edgesplit.procs import free_port, serve_command, wait_healthy
from splitcore.errors import UserError
from splitcore.loading import LoadedModel, load_checkpoint, resolve_model_dir
from splitcore.testing import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_pip_install_outside_the_checkout_serves_the_shipped_model(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies come from this environment (installing torch again would only copy it); edgesplit itself,
    # its code and its model, is what `pip install` puts in the new one.
    Path(site, "_edgesplit_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    source = tmp_path / "source"  # a copy: pip builds in the source tree, and the checkout stays as it is
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                                "test-artifacts", "results", ".*_cache"))
    subprocess.run([venv / "bin" / "pip", "install", "--quiet", "--no-deps", str(source)], check=True, cwd=tmp_path)
    edgesplit = str(venv / "bin" / "edgesplit")
    cloud_port, edge_port = free_port(), free_port()
    cloud_cmd = [edgesplit, "serve", "cloud", "--port", str(cloud_port)]
    edge_cmd = [edgesplit, "serve", "edge", "--port", str(edge_port), "--cloud", f"http://127.0.0.1:{cloud_port}",
                "--cut", "2:6", "--served-model-name", "shipped"]
    with serve_command(cloud_cmd, tmp_path / "cloud.log", cwd=tmp_path) as cloud, \
            serve_command(edge_cmd, tmp_path / "edge.log", cwd=tmp_path) as edge:
        wait_healthy(f"http://127.0.0.1:{cloud_port}/health", cloud)
        wait_healthy(f"http://127.0.0.1:{edge_port}/health", edge)
        url = f"http://127.0.0.1:{edge_port}"
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["shipped"]
        out = httpx.post(f"{url}/v1/completions", json={"model": "shipped", "prompt": "And it came to pass",
                                                        "max_tokens": 8, "temperature": 0}, timeout=60).json()
    assert out["usage"]["completion_tokens"] == 8 and out["edgesplit"]["cut"] == [2, 6]
    assert f"loaded {venv}" in (tmp_path / "cloud.log").read_text()  # the installed copy of the model


def _hub_cache(root: Path, repo: str, loaded: LoadedModel) -> Path:
    """A Hugging Face cache holding `repo` at one revision, laid out as `hf download` leaves it."""
    cache = root / f"models--{repo.replace('/', '--')}"
    save_checkpoint(loaded, cache / "snapshots" / "0123abcd")
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text("0123abcd")
    return cache


def test_a_model_in_the_hugging_face_cache_is_found_by_hub_id_or_directory(
        models: dict[str, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    cache = _hub_cache(tmp_path / "hub", "tiny-org/tiny-gpt2", models["gpt2"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = cache / "snapshots" / "0123abcd"
    assert resolve_model_dir("tiny-org/tiny-gpt2") == (snapshot, "tiny-org/tiny-gpt2")
    assert resolve_model_dir(cache) == (snapshot, "tiny-org/tiny-gpt2")
    assert resolve_model_dir(snapshot) == (snapshot, "tiny-org/tiny-gpt2")
    loaded = load_checkpoint("tiny-org/tiny-gpt2")
    assert loaded.name == "tiny-org/tiny-gpt2" and loaded.fingerprint == models["gpt2"].fingerprint
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        load_checkpoint("tiny-org/not-downloaded")

"""Both tiers on ONNX Runtime as real servers on loopback: same text as the unsplit model, speculating (verify
frames and rollbacks on both runtimes' caches); runtimes switched live."""

from __future__ import annotations

from pathlib import Path

import httpx

from cloud_service.settings import CloudSettings
from splitcore.loading import LoadedModel
from splitcore.testing import reference_text
from tests.servers import edge_and_cloud
from tests.system.test_services import PROMPT

TOKEN = "admin-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _complete(edge: str, n: int) -> dict:
    response = httpx.post(f"{edge}/v1/completions", json={"prompt": PROMPT, "max_tokens": n, "temperature": 0},
                          timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_both_tiers_on_onnxruntime_give_the_unsplit_models_text_and_switch_runtimes_live(
        models: dict[str, LoadedModel], onnx_dir: Path) -> None:
    loaded = models["llama"]
    n = 12
    expected = reference_text(loaded, PROMPT, n)
    cloud_settings = CloudSettings(backend="onnxruntime", onnx_dir=onnx_dir)
    with edge_and_cloud(loaded, cloud_settings, cut="1:3", codec="fp32", backend="onnxruntime", onnx_dir=onnx_dir,
                        admin_token=TOKEN) as tiers:
        edge, app = tiers.edge_url, tiers.edge_app
        both_ort = _complete(edge, n)
        assert both_ort["choices"][0]["text"] == expected
        # speculation (auto, the default) drafted, verified and rolled back on both runtimes' caches
        assert both_ort["edgesplit"]["speculation"]["round_trips"] > 0
        runner = app.state.runtime.orchestrator.runners.get()
        assert runner.name == "onnxruntime" and {(0, 1, True), (3, 4, False)} <= set(runner._sessions)
        mixed = httpx.post(f"{edge}/admin/plan", headers=AUTH, timeout=60,
                           json={"cut": "2:4", "codec": "fp32", "edge_backend": "torch",
                                 "cloud_backend": "onnxruntime"})
        assert mixed.status_code == 200 and "edge on torch, cloud on onnxruntime" in mixed.json()["describe"]
        assert _complete(edge, n)["choices"][0]["text"] == expected
        bad = httpx.post(f"{edge}/admin/plan", headers=AUTH, json={"cut": "2:4", "edge_backend": "tensorrt"})
        assert bad.status_code == 400 and "edge_backend" in bad.text

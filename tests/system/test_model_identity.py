"""Never the wrong model: a cloud with other weights (one changed element in the middle of a middle block) is
never mixed into an answer, on a fresh session or on a replay after the cloud lost one."""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest
import torch

from cloud_service.app import build_engine
from cloud_service.settings import CloudSettings
from splitcore.loading import LoadedModel, weight_digests
from splitcore.ranges import LayerRange
from splitcore.testing import reference_text, tiny_model
from tests.servers import edge_and_cloud

PROMPT = "The edge keeps the first layers"
N = 60


@pytest.fixture(scope="module")
def tampered() -> LoadedModel:
    """The tiny GPT-2 with one weight in the middle of block 2's MLP changed, digests taken anew (as at load)."""
    loaded = tiny_model("gpt2")
    flat = loaded.layered.blocks[2].mlp.c_fc.weight.data.view(-1)
    with torch.no_grad():
        flat[flat.numel() // 2] += 20.0  # far from the first and last 64 elements the old fingerprint sampled
    return dataclasses.replace(loaded, digests=weight_digests(loaded.layered))


@pytest.fixture(scope="module")
def original() -> LoadedModel:
    return tiny_model("gpt2")


def test_one_changed_weight_changes_the_identity_of_exactly_the_parts_that_hold_it(
        original: LoadedModel, tampered: LoadedModel) -> None:
    assert original.fingerprint != tampered.fingerprint
    for start, end in [(0, 2), (3, 4)]:
        assert original.digests.part(LayerRange(start=start, end=end)) == tampered.digests.part(
            LayerRange(start=start, end=end))
    assert original.digests.part(LayerRange(start=1, end=3)) != tampered.digests.part(LayerRange(start=1, end=3))
    assert reference_text(original, PROMPT, N) != reference_text(tampered, PROMPT, N), "the change must matter"


def test_a_cloud_with_other_weights_is_refused_and_the_edge_answers_with_its_own_model(
        original: LoadedModel, tampered: LoadedModel) -> None:
    expected = reference_text(original, PROMPT, N)
    body = {"prompt": PROMPT, "max_tokens": N, "temperature": 0}
    with edge_and_cloud(original, cut="1:3", codec="fp32") as tiers:
        tiers.cloud_app.state.engine = build_engine(CloudSettings(), tampered)  # restarted with other weights
        health = httpx.get(f"{tiers.edge_url}/health")
        assert health.json()["status"] == "degraded" and "not this edge's" in health.json()["detail"]
        out = httpx.post(f"{tiers.edge_url}/v1/completions", json=body, timeout=60).json()
    assert out["choices"][0]["text"] == expected
    assert "other weights" in out["edgesplit"]["fallback"] and out["edgesplit"]["cut"] == [4, 4]
    with edge_and_cloud(original, cut="1:3", codec="fp32", fallback=False) as tiers:
        tiers.cloud_app.state.engine = build_engine(CloudSettings(), tampered)
        refused = httpx.post(f"{tiers.edge_url}/v1/completions", json=body, timeout=60)
    assert refused.status_code == 502 and "other weights for blocks [1, 3)" in refused.json()["error"]["message"]


def test_a_session_replayed_onto_a_cloud_that_now_holds_other_weights_finishes_on_the_edge(
        original: LoadedModel, tampered: LoadedModel) -> None:
    expected = reference_text(original, PROMPT, N)
    body = {"prompt": PROMPT, "max_tokens": N, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    pieces, final = [], {}
    with edge_and_cloud(original, cut="1:3", codec="fp32", emulate_slowdown=10) as tiers, \
            httpx.stream("POST", f"{tiers.edge_url}/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            pieces += [c["text"] for c in chunk["choices"]]
            final = chunk if chunk.get("usage") else final
            if len(pieces) == 3:  # mid-stream: the cloud restarts (its sessions gone) with other weights
                tiers.cloud_app.state.engine = build_engine(CloudSettings(), tampered)
    assert "".join(pieces) == expected
    ext = final["edgesplit"]
    assert ext["replays"] == 1 and "other weights" in ext["fallback"]

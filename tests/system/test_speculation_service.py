"""Speculation across real services: verify frames and rollbacks over both transports, and a cloud that loses the
session mid-verification is rebuilt from the accepted prefix only, with the same output."""

from __future__ import annotations

import httpx
import pytest

from edge_service.generation import Finished, GenerationRequest
from edge_service.orchestrator import Orchestrator
from edgesplit.tools.inprocess import in_process_cloud
from splitcore.loading import LoadedModel
from splitcore.plan import Plan
from splitcore.testing import reference_tokens
from splitcore.wire import FrameCodec
from tests.servers import edge_and_cloud

PROMPT = list(range(30, 41))


@pytest.mark.parametrize("transport", ["websocket", "http"])
def test_a_speculating_edge_serves_the_models_greedy_tokens_and_reports_its_rounds(
        models: dict[str, LoadedModel], transport: str) -> None:
    loaded = models["llama"]
    with edge_and_cloud(loaded, cut="1:3", codec="fp32", speculate="4", cloud_transport=transport) as tiers:
        answer = httpx.post(f"{tiers.edge_url}/v1/completions",
                            json={"prompt": PROMPT, "max_tokens": 16, "temperature": 0}, timeout=60)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        metrics = httpx.get(f"{tiers.edge_url}/metrics", timeout=10).text
    tokens = reference_tokens(loaded, PROMPT, 16)
    assert body["choices"][0]["text"] == loaded.tokenizer.decode(tokens, skip_special_tokens=True)
    spec = body["edgesplit"]["speculation"]
    assert spec["depth"] == 4 and spec["round_trips"] > 0 and spec["drafted"] >= spec["accepted"] >= 0
    assert "edgesplit_edge_speculation_acceptance_ratio_count" in metrics


def test_a_session_lost_mid_verification_is_replayed_from_the_accepted_prefix(models: dict[str, LoadedModel]
                                                                              ) -> None:
    loaded = models["gpt2"]
    engine = in_process_cloud(loaded)
    codec = FrameCodec()
    lost: list[int] = []

    class Forgetful:  # the cloud drops the session just before the second verify frame (several positions)
        verifies = 0

        def forward(self, frame: bytes, *, timeout_s: float | None = None, session: object = None) -> bytes:
            decoded = codec.decode(frame)
            if decoded.position > 0 and decoded.tensor.shape[0] > 1:
                self.verifies += 1
                if self.verifies == 2:
                    engine.end_session(decoded.session)
                    lost.append(decoded.position)
            return engine.forward(frame)

        def end_session(self, session: object) -> None:
            engine.end_session(session)  # type: ignore[arg-type]

    orchestrator = Orchestrator(loaded, Plan(num_layers=4, cut_a=1, cut_b=3, codec="fp32"), Forgetful(),
                                speculate=3)
    done = list(orchestrator.generate(GenerationRequest(prompt_ids=PROMPT, max_tokens=20)))[-1]
    assert isinstance(done, Finished)
    assert lost and done.replays == 1
    assert done.token_ids == reference_tokens(loaded, PROMPT, 20)
    assert done.speculation is not None and done.speculation.round_trips > 2  # it went on speculating after

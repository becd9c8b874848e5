"""The checkpoint the project ships: loads like any user checkpoint, and splits exactly."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgesplit.tools.inprocess import split_generate
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.loading import LoadedModel, load_checkpoint
from splitcore.plan import Plan
from splitcore.testing import reference_tokens


@pytest.fixture(scope="module")
def shipped() -> LoadedModel:
    return load_checkpoint(DEFAULT_MODEL_DIR)


def test_the_shipped_checkpoint_is_small_and_standard(shipped: LoadedModel) -> None:
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.iterdir())
    assert size <= 25 * 2**20
    assert 6 <= shipped.layered.num_layers <= 12
    assert AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR) is not None
    assert AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR).decode([]) == ""


@pytest.mark.parametrize(("a", "b", "head"), [(1, 4, "edge"), (2, 6, "edge"), (4, 8, "edge"), (3, 8, "cloud")])
def test_split_generation_equals_unsplit_on_the_shipped_model(shipped: LoadedModel, a: int, b: int,
                                                             head: str) -> None:
    prompt = shipped.tokenizer.encode("And it came to pass, when the king")
    plan = Plan(num_layers=shipped.layered.num_layers, cut_a=a, cut_b=b, head=head, codec="fp32")
    assert split_generate(shipped, plan, prompt, 24).token_ids == reference_tokens(shipped, prompt, 24)


def test_the_shipped_draft_model_drafts_for_the_shipped_model_with_the_same_output(shipped: LoadedModel) -> None:
    """models/draft shares the shipped model's tokenizer, is well under its size, and speculating with it gives
    the fp32 split's greedy tokens while most drafts are accepted."""
    from edge_service.generation import Finished, GenerationRequest
    from edge_service.orchestrator import Orchestrator
    from edge_service.speculation import DraftModel
    from edgesplit.tools.inprocess import in_process_cloud

    draft = DraftModel.load(DEFAULT_MODEL_DIR.parent / "draft", shipped)
    params = sum(p.numel() for p in draft.loaded.layered.model.parameters())
    assert params <= 0.3 * sum(p.numel() for p in shipped.layered.model.parameters())
    plan = Plan(num_layers=shipped.layered.num_layers, cut_a=2, cut_b=6, codec="fp32")
    prompt = shipped.tokenizer.encode("And God said unto Moses,")
    request = GenerationRequest(prompt_ids=prompt, max_tokens=24, ignore_eos=True)
    outs = [list(Orchestrator(shipped, plan, in_process_cloud(shipped), speculate=depth, draft=draft)
                 .generate(request))[-1] for depth in (0, 4)]
    assert all(isinstance(o, Finished) for o in outs)
    plain, speculated = outs
    assert speculated.token_ids == plain.token_ids
    spec = speculated.speculation
    assert spec is not None and spec.accepted > spec.drafted / 3

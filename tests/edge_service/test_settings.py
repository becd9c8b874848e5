"""Which draft an edge speculates with: the shipped draft with the shipped model, else its own blocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_service.runtime import _draft
from edge_service.settings import EdgeSettings
from splitcore.defaults import DEFAULT_DRAFT_DIR, DEFAULT_MODEL_DIR
from splitcore.errors import UserError
from splitcore.loading import LoadedModel, load_checkpoint


def test_the_shipped_model_speculates_by_default_with_the_shipped_draft(models: dict[str, LoadedModel]) -> None:
    settings = EdgeSettings()
    assert settings.speculate == "auto" and settings.model_dir == DEFAULT_MODEL_DIR
    assert settings.draft_dir() == DEFAULT_DRAFT_DIR
    draft = _draft(settings, load_checkpoint(DEFAULT_MODEL_DIR))
    assert draft is not None and draft.loaded.layered.num_layers == 2
    assert EdgeSettings(draft_model="self").draft_dir() is None
    assert EdgeSettings(model_dir=Path("/elsewhere")).draft_dir() is None  # another model: its own blocks draft
    assert _draft(EdgeSettings(speculate="off"), load_checkpoint(DEFAULT_MODEL_DIR)) is None  # not even loaded


def test_a_draft_with_another_tokenizer_falls_back_to_self_unless_the_operator_named_it(
        models: dict[str, LoadedModel]) -> None:
    tiny = models["gpt2"]  # served with the default settings, whose model directory is the shipped one
    assert _draft(EdgeSettings(), tiny) is None
    with pytest.raises(UserError) as refused:
        _draft(EdgeSettings(draft_model=str(DEFAULT_DRAFT_DIR)), tiny)
    assert refused.value.param == "draft_model"

"""Loading checkpoints from a local directory, and refusing what cannot be cut."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig

from splitcore.errors import UnsupportedModelError, UserError
from splitcore.loading import LoadedModel, from_config, load_checkpoint
from splitcore.testing import save_checkpoint


def test_a_saved_checkpoint_loads_back_with_the_same_identity(models: dict[str, LoadedModel], tmp_path: Path) -> None:
    original = models["llama"]
    path = save_checkpoint(original, tmp_path / "ckpt")
    loaded = load_checkpoint(path)
    assert loaded.fingerprint == original.fingerprint and loaded.layered.num_layers == 4
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(loaded.layered.model(ids).logits, original.layered.model(ids).logits)
    assert loaded.tokenizer.encode("café") == original.tokenizer.encode("café")
    assert AutoModelForCausalLM.from_pretrained(path) is not None and AutoTokenizer.from_pretrained(path) is not None


def test_an_unsupported_architecture_is_refused_naming_the_supported_ones(tmp_path: Path) -> None:
    BertConfig(is_decoder=True).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="gpt2, llama, mistral, qwen2"):
        load_checkpoint(tmp_path)


def test_a_directory_without_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no config.json"):
        load_checkpoint(tmp_path / "missing")


def test_different_weights_have_different_fingerprints(models: dict[str, LoadedModel]) -> None:
    other = from_config(models["gpt2"].layered.config, seed=1)
    assert other.fingerprint != models["gpt2"].fingerprint

"""Load a causal LM from a local Hugging Face checkpoint directory (or a config, for tests).

No hub: everything loads with `local_files_only=True`, so a missing file is a
clear error instead of a network call.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from splitcore.errors import UnsupportedModelError, UserError
from splitcore.layered import SUPPORTED_FAMILIES, LayeredModel, wrap

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A layered model with its tokenizer and an identity both tiers can compare."""

    layered: LayeredModel
    tokenizer: PreTrainedTokenizerBase | None
    name: str
    fingerprint: str


def fingerprint(layered: LayeredModel) -> str:
    """A short digest of the architecture and a sample of every weight, so two tiers can check they hold one model.

    Path-like config fields (`_name_or_path`, versions) are left out: copies of one checkpoint agree wherever
    they live.
    """
    shape = (layered.model_type, layered.num_layers, layered.hidden_size, layered.vocab_size)
    digest = hashlib.sha256(json.dumps(shape).encode())
    for name, tensor in layered.model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(flat[:64].float().numpy().tobytes() + flat[-64:].float().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load the checkpoint directory `path` (config, safetensors weights, tokenizer files).

    Raises:
        UserError: the directory is missing or is not a checkpoint.
        UnsupportedModelError: the architecture is not one edgesplit can cut.
    """
    path = Path(path)
    config = read_config(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    layered = wrap(model)
    log.info("loaded %s (%s, %d blocks, hidden %d)", path, config.model_type, layered.num_layers, layered.hidden_size)
    return LoadedModel(layered=layered, tokenizer=tokenizer, name=path.name, fingerprint=fingerprint(layered))


def from_config(config: PretrainedConfig, seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None,
                name: str = "in-memory") -> LoadedModel:
    """Build a randomly initialised model from a `transformers` config (tests and timing benchmarks)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    layered = wrap(model)
    return LoadedModel(layered=layered, tokenizer=tokenizer, name=name, fingerprint=fingerprint(layered))


def read_config(path: str | Path) -> PretrainedConfig:
    """The checkpoint's config alone (cheap), checked for a supported architecture.

    Raises:
        UserError: the directory is missing or is not a checkpoint.
        UnsupportedModelError: the architecture is not one edgesplit can cut.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(f"model type {config.model_type!r} in {path} is not supported; edgesplit cuts "
                                    f"{', '.join(sorted(SUPPORTED_FAMILIES))} checkpoints")
    return config

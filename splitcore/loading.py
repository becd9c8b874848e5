"""Load a causal LM from a local Hugging Face checkpoint directory (or a config, for tests).

No hub: everything loads with `local_files_only=True`, so a missing file is a
clear error instead of a network call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from splitcore.errors import UnsupportedModelError, UserError
from splitcore.layered import SUPPORTED_FAMILIES, LayeredModel, wrap
from splitcore.ranges import LayerRange

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightDigests:
    """SHA-256 of every weight of a model, part by part, taken once at load.

    A tier vouches for the part it runs: `part(layers, embed, head)` digests the embeddings (when the part starts
    from token ids), blocks `layers` and the final norm and head (when it samples), so an edge can name the part
    it expects of the cloud and the cloud refuse a session whose weights differ by a single element.
    """

    embed: str
    blocks: tuple[str, ...]
    head: str

    def part(self, layers: LayerRange, embed: bool = False, head: bool = False) -> str:
        digest = hashlib.sha256(f"{layers.start}:{layers.end}:{int(embed)}{int(head)}".encode())
        blocks = self.blocks[layers.start:layers.end]
        for d in [*([self.embed] if embed else []), *blocks, *([self.head] if head else [])]:
            digest.update(bytes.fromhex(d))
        return digest.hexdigest()


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of names, dtypes, shapes and every byte of `tensors` (no copy of contiguous weights)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        flat = tensor.detach().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def weight_digests(layered: LayeredModel) -> WeightDigests:
    """Digests of the embeddings, each block, and the final norm with the LM head, over their full weights."""
    embeddings = {f"{name}.{k}": v for name, mod in layered.model.named_modules()
                  if isinstance(mod, torch.nn.Embedding) for k, v in mod.state_dict().items()}
    head = {**{f"norm.{k}": v for k, v in layered.norm.state_dict().items()},
            **{f"lm_head.{k}": v for k, v in layered.lm_head.state_dict().items()}}
    return WeightDigests(embed=_digest(embeddings), blocks=tuple(_digest(b.state_dict()) for b in layered.blocks),
                         head=_digest(head))


@dataclass
class LoadedModel:
    """A layered model with its tokenizer and an identity both tiers can compare."""

    layered: LayeredModel
    tokenizer: PreTrainedTokenizerBase | None
    name: str
    digests: WeightDigests

    @property
    def fingerprint(self) -> str:
        """A short identity of the architecture and every weight (the profile's and `/v1/info`'s model identity)."""
        m = self.layered
        shape = json.dumps((m.model_type, m.num_layers, m.hidden_size, m.vocab_size)).encode()
        every = self.digests.part(LayerRange(start=0, end=m.num_layers), embed=True, head=True)
        return hashlib.sha256(shape + bytes.fromhex(every)).hexdigest()[:16]


def _loaded(layered: LayeredModel, tokenizer: PreTrainedTokenizerBase | None, name: str) -> LoadedModel:
    started = time.perf_counter()
    digests = weight_digests(layered)
    log.debug("digested the weights of %s in %.0f ms", name, (time.perf_counter() - started) * 1000)
    return LoadedModel(layered=layered, tokenizer=tokenizer, name=name, digests=digests)


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load the checkpoint directory `path` (config, safetensors weights, tokenizer files).

    Raises:
        UserError: the directory is missing or is not a checkpoint.
        UnsupportedModelError: the architecture is not one edgesplit can cut.
    """
    path, name = resolve_model_dir(path)
    config = read_config(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    layered = wrap(model)
    log.info("loaded %s (%s, %d blocks, hidden %d)", path, config.model_type, layered.num_layers, layered.hidden_size)
    return _loaded(layered, tokenizer, name)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_dir(given: str | Path) -> tuple[Path, str]:
    """The checkpoint directory `given` names, and the model's name: a directory (its name), a Hugging Face cache
    snapshot (`.../models--org--name/snapshots/<rev>`) or repository cache (`.../models--org--name`, its
    `refs/main`), or a hub id (`org/name`) already in the local cache (`HF_HOME`); nothing is downloaded.

    Raises:
        UserError: none of those, with what to do.
    """
    path = Path(given)
    repo = next((p for p in (path, *path.parents) if p.name.startswith("models--")), None)
    name = repo.name.removeprefix("models--").replace("--", "/") if repo is not None else path.name
    if (path / "config.json").is_file():
        return path, name
    if repo == path and (path / "refs" / "main").is_file():  # a repository's cache: its main revision
        snapshot = path / "snapshots" / (path / "refs" / "main").read_text().strip()
        if (snapshot / "config.json").is_file():
            return snapshot, name
    if not path.exists() and HUB_ID.match(str(given)):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(str(given), local_files_only=True)), str(given)
        except (LocalEntryNotFoundError, OSError, ValueError) as exc:
            raise UserError(f"{given} is not a directory, and the hub model {given!r} is not in the local Hugging "
                            f"Face cache ({exc.__class__.__name__}); download it where there is a network "
                            f"(hf download {given}) and copy the cache, or pass the checkpoint directory") from exc
    return path, name


def from_config(config: PretrainedConfig, seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None,
                name: str = "in-memory") -> LoadedModel:
    """Build a randomly initialised model from a `transformers` config (tests and timing benchmarks)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    layered = wrap(model)
    return _loaded(layered, tokenizer, name)


def read_config(path: str | Path) -> PretrainedConfig:
    """The checkpoint's config alone (cheap), checked for a supported architecture.

    Raises:
        UserError: the directory is missing or is not a checkpoint.
        UnsupportedModelError: the architecture is not one edgesplit can cut.
    """
    path = resolve_model_dir(path)[0]
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(f"model type {config.model_type!r} in {path} is not supported; edgesplit cuts "
                                    f"{', '.join(sorted(SUPPORTED_FAMILIES))} checkpoints")
    return config

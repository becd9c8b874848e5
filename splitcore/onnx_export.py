"""Exporting a layer range (and the head) of a layered model to ONNX, cached on disk.

A range graph takes `(x, position_ids, past_k_i, past_v_i ...)` and returns `(hidden, present_k_i,
present_v_i ...)` for each block `i` of the range: `x` is token ids `(1, seq)` when the range starts at the
embeddings and hidden states `(1, seq, hidden)` otherwise. The past has a dynamic length, so the same graph
runs a prefill (past of length 0) and decode steps (one new position over the cache), as optimum's
`decoder_with_past` models do. The blocks are the `transformers` modules themselves, called as
`splitcore.layered` calls them, with a duck-typed cache that concatenates and hands back the presents, and an
explicit causal mask built from the positions (so no branch of the mask helpers is baked in by the trace).

Exports use the TorchScript exporter (`dynamo=False`): the same graphs from the dynamo exporter gave the same
numbers (max abs diff 1.6e-5 GPT-2, 7.8e-5 Llama on tiny models) but took 6-11 s per range instead of 0.5 s, and
the profiler exports every block. The file name carries a fingerprint of the weights, the config, the range, the
options and the torch/transformers/onnx/onnxruntime versions, so a stale export is never reused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
import transformers
from torch import nn

from splitcore.errors import UnsupportedModelError
from splitcore.layered import LayeredModel, LlamaLayered
from splitcore.ranges import LayerRange

log = logging.getLogger(__name__)
OPSET = 17
_SAMPLE_SEQ, _SAMPLE_PAST = 3, 5  # trace shapes; both axes are dynamic in the graph


class _PresentCache:
    """Stands in for a `transformers` Cache inside the traced graph: past + new keys/values, kept as presents."""

    def __init__(self, past: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.past = past
        self.present: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:  # transformers 5.24 passes `kwargs=`, earlier ones did not
        past_k, past_v = self.past[layer_idx]  # (1, kv_heads, past, head_dim)
        keys, values = torch.cat([past_k, keys], dim=-2), torch.cat([past_v, values], dim=-2)
        self.present[layer_idx] = (keys, values)
        return keys, values


class RangeModule(nn.Module):
    """Blocks `layers` of `m` (after the embeddings when `embed`) with the KV cache as inputs and outputs."""

    def __init__(self, m: LayeredModel, layers: LayerRange, embed: bool) -> None:
        super().__init__()
        self.m, self.layers, self.embed = m, layers, embed
        self.blocks = nn.ModuleList([m.blocks[i] for i in layers])  # registered, so the export sees the weights

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.m
        hidden = m.embed(x, position_ids) if self.embed else x  # (1, seq, hidden)
        if len(self.layers) == 0:
            return (hidden,)
        cache = _PresentCache({i: (past[2 * j], past[2 * j + 1]) for j, i in enumerate(self.layers)})
        total = past[0].shape[2] + hidden.shape[1]
        allowed = torch.arange(total)[None, :] <= position_ids[0][:, None]  # (seq, past + seq): causal
        mask = torch.zeros(allowed.shape, dtype=hidden.dtype).masked_fill(~allowed, torch.finfo(hidden.dtype).min)
        mask = mask[None, None]  # (1, 1, seq, past + seq), additive
        if isinstance(m, LlamaLayered):
            rotary = m.inner.rotary_emb(hidden, position_ids)
            for i, block in zip(self.layers, self.blocks, strict=True):
                hidden = _first(block(hidden, attention_mask=mask, position_embeddings=rotary,
                                      position_ids=position_ids, past_key_values=cache, use_cache=True))
                assert i in cache.present, f"block {i} did not update the cache"
        else:
            for block in self.blocks:
                hidden = _first(block(hidden, cache, mask, use_cache=True, position_ids=position_ids))
        presents = [t for i in self.layers for t in cache.present[i]]
        return (hidden, *presents)


class HeadModule(nn.Module):
    """Final norm and LM head on one position: (1, 1, hidden) -> logits (1, vocab)."""

    def __init__(self, m: LayeredModel) -> None:
        super().__init__()
        self.norm, self.lm_head = m.norm, m.lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))[:, -1, :]


def _first(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def kv_shape(m: LayeredModel, past: int) -> tuple[int, int, int, int]:
    """The shape of one block's key (or value) cache holding `past` positions."""
    heads = m.config.num_attention_heads
    kv_heads = getattr(m.config, "num_key_value_heads", None) or heads
    head_dim = getattr(m.config, "head_dim", None) or m.hidden_size // heads
    return (1, kv_heads, past, head_dim)


def range_names(layers: LayerRange) -> tuple[list[str], list[str]]:
    """Input and output names of a range graph."""
    pasts = [f"past_{kind}_{i}" for i in layers for kind in ("k", "v")]
    return ["x", "position_ids", *pasts], ["hidden", *(p.replace("past", "present") for p in pasts)]


def _check_exportable(m: LayeredModel, layers: LayerRange) -> None:
    if isinstance(m, LlamaLayered) and any(m.layer_types[i] != "full_attention" for i in layers):
        raise UnsupportedModelError(f"blocks {layers} use sliding-window attention; the ONNX export covers full "
                                    "attention only (run this range with --backend torch)")


@torch.inference_mode()
def export_range(m: LayeredModel, layers: LayerRange, embed: bool, path: Path) -> None:
    """Trace blocks `layers` (with the embeddings first when `embed`) into the ONNX file `path`."""
    _check_exportable(m, layers)
    module = RangeModule(m, layers, embed).eval()
    x = (torch.randint(0, m.vocab_size, (1, _SAMPLE_SEQ)) if embed
         else torch.randn(1, _SAMPLE_SEQ, m.hidden_size))
    position_ids = torch.arange(_SAMPLE_PAST, _SAMPLE_PAST + _SAMPLE_SEQ).unsqueeze(0)
    past = [torch.randn(kv_shape(m, _SAMPLE_PAST)) for _ in range(2 * len(layers))]
    inputs, outputs = range_names(layers)
    axes = {"x": {1: "seq"}, "position_ids": {1: "seq"}, "hidden": {1: "seq"},
            **{name: {2: "past"} for name in inputs[2:]}, **{name: {2: "total"} for name in outputs[1:]}}
    with warnings.catch_warnings():  # the tracer's notes on Python branches: the mask is explicit, none of them
        warnings.simplefilter("ignore")  # depends on the traced lengths (the parity tests run other lengths)
        torch.onnx.export(module, (x, position_ids, *past), str(path), dynamo=False, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=OPSET)


@torch.inference_mode()
def export_head(m: LayeredModel, path: Path) -> None:
    """Trace the final norm and LM head into the ONNX file `path`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice (see the module docstring)
        torch.onnx.export(HeadModule(m).eval(), (torch.randn(1, 1, m.hidden_size),), str(path), dynamo=False,
                          input_names=["hidden"], output_names=["logits"], opset_version=OPSET)


def quantize_int8(source: Path, target: Path) -> None:
    """Int8 weights for the MatMul/Gemm layers (onnxruntime's dynamic quantisation; activations stay fp32)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # imports onnx's helpers: only when asked

    quantize_dynamic(source, target, weight_type=QuantType.QInt8)


def fingerprint(modules: list[nn.Module], *parts: str) -> str:
    """A digest of the modules' weights and buffers, the versions that shape an export, and `parts`."""
    digest = hashlib.sha256()
    for part in (torch.__version__, transformers.__version__, onnx.__version__, onnxruntime.__version__,
                 str(OPSET), *parts):
        digest.update(part.encode() + b"\0")
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


class ExportCache:
    """ONNX files of ranges and heads under `root`, exported once and found again by fingerprint."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def range(self, m: LayeredModel, layers: LayerRange, embed: bool, quantize: bool = False) -> Path:
        """The ONNX file of blocks `layers` (embeddings first when `embed`), exporting it if missing."""
        modules: list[nn.Module] = [m.blocks[i] for i in layers]
        if embed:
            modules.append(m.model.get_input_embeddings())
            modules += [mod for name, mod in m.model.named_modules() if name.endswith("wpe")]
        key = fingerprint(modules, m.config.to_json_string(), f"{layers.start}:{layers.end}:{embed}")
        name = f"{m.model_type}-{layers.start}-{layers.end}{'-embed' if embed else ''}-{key}.onnx"
        return self._get(name, quantize, lambda path: export_range(m, layers, embed, path))

    def head(self, m: LayeredModel, quantize: bool = False) -> Path:
        """The ONNX file of the final norm and LM head, exporting it if missing."""
        key = fingerprint([m.norm, m.lm_head], m.config.to_json_string(), "head")
        return self._get(f"{m.model_type}-head-{key}.onnx", quantize, lambda path: export_head(m, path))

    def _get(self, name: str, quantize: bool, export: Callable[[Path], None]) -> Path:
        path = self.root / name
        if not path.exists():
            self._atomically(path, export)
        if not quantize:
            return path
        quantized = path.with_suffix(".int8.onnx")
        if not quantized.exists():
            self._atomically(quantized, lambda target: quantize_int8(path, target))
        return quantized

    def _atomically(self, path: Path, write: Callable[[Path], None]) -> None:
        """Write to a temporary name and rename, so a concurrent reader never sees half a file."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.onnx", dir=self.root)
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, path)
            log.info("exported %s", path.name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

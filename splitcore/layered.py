"""A uniform layered view of a causal LM: embed, blocks, final norm, head.

Each family adapter calls the `transformers` modules exactly as the family's
own `forward` does (same mask helper, same rotary embedding, same cache
object), so running the blocks range by range gives the unsplit model's
numbers. Follows the shape of Petals' `WrappedLlamaBlock` / exo's shards.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from splitcore.errors import UnsupportedModelError
from splitcore.ranges import LayerRange

SUPPORTED_FAMILIES = {
    "gpt2": "gpt2",
    "llama": "llama",
    "qwen2": "llama",
    "mistral": "llama",
}


class LayeredModel:
    """A causal LM seen as `embed -> blocks[0..L) -> norm -> head`, batch size 1."""

    def __init__(self, model: PreTrainedModel, blocks: nn.ModuleList, norm: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)
        self.config = model.config
        self.blocks = blocks
        self.norm = norm
        self.lm_head: nn.Module = model.get_output_embeddings()
        self.num_layers: int = len(blocks)
        self.hidden_size: int = self.config.hidden_size
        self.vocab_size: int = self.config.vocab_size
        self.model_type: str = self.config.model_type
        # positions the model can attend over; a config without a limit (rotary, no table) is unbounded here
        self.max_positions: int = int(getattr(self.config, "max_position_embeddings", 0) or 2**31)

    def new_cache(self) -> DynamicCache:
        """An empty KV cache shaped for this model; a tier fills only its own layers."""
        return DynamicCache(config=self.config)

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (1, seq) -> hidden states (1, seq, hidden)."""
        raise NotImplementedError

    def run_layers(self, layers: LayerRange, hidden: torch.Tensor, cache: DynamicCache,
                   position_ids: torch.Tensor) -> torch.Tensor:
        """Run blocks `layers` on hidden (1, seq, hidden), appending to their KV cache."""
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on the last position: (1, seq, hidden) -> (1, vocab)."""
        return self.lm_head(self.norm(hidden[:, -1:, :]))[:, -1, :]

    def logits_all(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on every position: (1, seq, hidden) -> (seq, vocab) (speculation's verify)."""
        return self.lm_head(self.norm(hidden))[0]

    def drop_blocks_outside(self, keep: LayerRange) -> None:
        """Free the weights of blocks this tier will never run."""
        for i in range(self.num_layers):
            if i not in range(keep.start, keep.end):
                self.blocks[i] = nn.Identity()

    def _mask(self, hidden: torch.Tensor, cache: DynamicCache, position_ids: torch.Tensor, layer: int,
              sliding: bool = False) -> Any:  # a tensor, None (sdpa's is_causal) or a flex BlockMask
        make = create_sliding_window_causal_mask if sliding else create_causal_mask
        return make(config=self.config, inputs_embeds=hidden, attention_mask=None, past_key_values=cache,
                    position_ids=position_ids, layer_idx=layer)


def _first(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class GPT2Layered(LayeredModel):
    """GPT-2: learned absolute positions, LayerNorm, tied head."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.transformer: Any = cast(Any, model.transformer)
        super().__init__(model, self.transformer.h, self.transformer.ln_f)

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.transformer.wte(input_ids) + self.transformer.wpe(position_ids)  # (1, seq, hidden)

    def run_layers(self, layers: LayerRange, hidden: torch.Tensor, cache: DynamicCache,
                   position_ids: torch.Tensor) -> torch.Tensor:
        if len(layers) == 0:
            return hidden
        mask = self._mask(hidden, cache, position_ids, layers.start)
        for i in layers:
            hidden = _first(self.blocks[i](hidden, cache, mask, use_cache=True, position_ids=position_ids))
        return hidden


class LlamaLayered(LayeredModel):
    """Llama, Qwen2, Mistral: rotary positions, RMSNorm, optional sliding-window layers."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.inner: Any = cast(Any, model.model)
        super().__init__(model, self.inner.layers, self.inner.norm)
        types = getattr(self.config, "layer_types", None)
        if types is None:
            sliding = getattr(self.config, "sliding_window", None) is not None and self.model_type == "mistral"
            types = ["sliding_attention" if sliding else "full_attention"] * self.num_layers
        self.layer_types: list[str] = list(types)

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.inner.embed_tokens(input_ids)  # (1, seq, hidden)

    def run_layers(self, layers: LayerRange, hidden: torch.Tensor, cache: DynamicCache,
                   position_ids: torch.Tensor) -> torch.Tensor:
        if len(layers) == 0:
            return hidden
        masks: dict[str, Any] = {}
        for i in layers:  # masks are sized from the cache before any layer of this call appends to it
            kind = self.layer_types[i]
            if kind not in masks:
                masks[kind] = self._mask(hidden, cache, position_ids, i, sliding=kind == "sliding_attention")
        rotary = self.inner.rotary_emb(hidden, position_ids)  # (cos, sin)
        for i in layers:
            hidden = _first(self.blocks[i](hidden, attention_mask=masks[self.layer_types[i]],
                                           position_embeddings=rotary, position_ids=position_ids,
                                           past_key_values=cache, use_cache=True))
        return hidden


def wrap(model: PreTrainedModel) -> LayeredModel:
    """Wrap a loaded causal LM in its family's layered view.

    Raises:
        UnsupportedModelError: the architecture is not GPT-2 or Llama-family.
    """
    family = SUPPORTED_FAMILIES.get(model.config.model_type)
    if family is None:
        raise UnsupportedModelError(
            f"model type {model.config.model_type!r} is not supported; edgesplit cuts "
            f"{', '.join(sorted(SUPPORTED_FAMILIES))} checkpoints"
        )
    return GPT2Layered(model) if family == "gpt2" else LlamaLayered(model)

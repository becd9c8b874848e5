"""Running one tier's part of a step: a layer range over a session's own KV cache."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from splitcore.layered import LayeredModel
from splitcore.ranges import LayerRange


@dataclass
class ShardState:
    """One session's state on one tier: its KV cache and how many positions it holds."""

    cache: DynamicCache
    position: int = 0
    cache_bytes: int = field(default=0)

    def measure(self) -> int:
        """Recount the bytes held by the cache's key and value tensors."""
        total = 0
        for layer in self.cache.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        self.cache_bytes = total
        return total


@torch.inference_mode()
def run_range(model: LayeredModel, state: ShardState, layers: LayerRange, hidden: torch.Tensor | None = None,
              input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Embed (when given token ids) and run `layers` for the next positions of the session.

    Args:
        model: the layered model.
        state: this tier's session state; its position advances by the number of new positions.
        layers: the blocks to run, `[start, end)`.
        hidden: hidden states (seq, hidden) or (1, seq, hidden), when the range starts mid-model.
        input_ids: token ids (seq,), when the range starts at the embeddings.

    Returns:
        Hidden states (1, seq, hidden) after the last block of the range.
    """
    assert (hidden is None) != (input_ids is None), "pass exactly one of hidden states or token ids"
    if input_ids is not None:
        seq = input_ids.shape[-1]
        position_ids = torch.arange(state.position, state.position + seq).unsqueeze(0)  # (1, seq)
        hidden = model.embed(input_ids.view(1, -1), position_ids)
    else:
        assert hidden is not None
        seq = hidden.shape[-2]
        position_ids = torch.arange(state.position, state.position + seq).unsqueeze(0)  # (1, seq)
    hidden = hidden.view(1, seq, model.hidden_size)
    hidden = model.run_layers(layers, hidden, state.cache, position_ids)
    state.position += seq
    return hidden

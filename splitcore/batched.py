"""One forward of a block range over the next positions of several sessions, each with its own KV cache.

Rows are sessions at different cache lengths, each bringing one position (decode) or a chunk of its prompt
(prefill). Their caches are gathered left-padded into one tensor per block, `(rows, kv_heads, past + new,
head_dim)`, and a boolean attention mask built from each row's absolute positions hides the padding, keeps
the new positions causal (and, for sliding-window layers, inside the window). This is the padding-with-mask
way `transformers` itself batches prompts of different lengths: the blocks are the `transformers` modules,
their attention is its SDPA path, and nothing here computes attention by hand. A paged cache would avoid the
gather copy, but `transformers`' paged attention runs only inside its own generation manager; the copy costs
what a `DynamicCache` already costs per step (it concatenates the whole cache each time), and a lone session
skips it (its own storage is passed as is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from splitcore.kvcache import TorchState
from splitcore.layered import LayeredModel, LlamaLayered, _first
from splitcore.ranges import LayerRange


@dataclass
class Row:
    """One session's part of a batch: its state and its new positions (hidden states or token ids)."""

    state: TorchState
    hidden: torch.Tensor | None = None  # (new, hidden)
    input_ids: torch.Tensor | None = None  # (new,)

    @classmethod
    def of(cls, state: TorchState, x: torch.Tensor, embed: bool) -> Row:
        """A row of token ids `(new,)` when `embed`, else of hidden states `(new, hidden)`."""
        return cls(state, input_ids=x) if embed else cls(state, hidden=x)

    @property
    def new(self) -> int:
        x = self.input_ids if self.input_ids is not None else self.hidden
        assert x is not None, "a row brings hidden states or token ids"
        return int(x.shape[0])


def step_input(model: LayeredModel, hidden: torch.Tensor | None, input_ids: torch.Tensor | None
               ) -> tuple[torch.Tensor, bool]:
    """A step's new positions, flat: token ids `(new,)` or hidden states `(new, hidden)`; and whether they are
    token ids (to embed first)."""
    assert (hidden is None) != (input_ids is None), "pass exactly one of hidden states or token ids"
    if input_ids is not None:
        return input_ids.reshape(-1), True
    assert hidden is not None
    return hidden.reshape(-1, model.hidden_size), False


class _BatchCache:
    """Stands in for a `transformers` Cache for one forward: `update` appends each row's new keys and values
    to its session's own storage and returns the padded batch of keys and values the attention reads."""

    def __init__(self, rows: list[Row], past: list[int], new: list[int]) -> None:
        self.rows, self.new, self.max_past = rows, new, max(past)

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        # keys, values: (rows, kv_heads, new_max, head_dim)
        if len(self.rows) == 1:  # alone: the session's own storage, no copy
            return self.rows[0].state.kv.append(layer_idx, keys[:, :, :self.new[0]], values[:, :, :self.new[0]])
        batch, heads, new_max, dim = keys.shape
        out_k = keys.new_zeros((batch, heads, self.max_past + new_max, dim))  # zeros in the padding: never NaN
        out_v = values.new_zeros((batch, heads, self.max_past + new_max, dim))
        out_k[:, :, self.max_past:] = keys
        out_v[:, :, self.max_past:] = values
        for i, row in enumerate(self.rows):
            kv, n = row.state.kv, self.new[i]
            held = kv.view(layer_idx)
            if held is not None:
                out_k[i, :, self.max_past - held[0].shape[2]:self.max_past] = held[0][0]
                out_v[i, :, self.max_past - held[1].shape[2]:self.max_past] = held[1][0]
            kv.append(layer_idx, keys[i:i + 1, :, :n], values[i:i + 1, :, :n])
        return out_k, out_v


def _positions(past: list[int], new: list[int], limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions `(rows, new_max)` and key positions `(rows, past_max + new_max)`; -1 marks padding."""
    lengths = torch.tensor(past)[:, None]  # (rows, 1)
    max_past, new_max = max(past), max(new)
    query = lengths + torch.arange(new_max)  # padded queries continue counting; their outputs are dropped
    column = torch.arange(max_past + new_max)[None, :]
    held = column - (max_past - lengths)  # the past, left-padded: negative in the padding
    keys = torch.where(column < max_past, held.clamp(min=-1), lengths + column - max_past)
    return query.clamp(max=limit - 1), keys


def _mask(query: torch.Tensor, keys: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean `(rows, 1, new_max, keys)`: True where a query may attend a key."""
    q, k = query[:, :, None], keys[:, None, :]
    allowed = (k >= 0) & (k <= q)
    if window is not None:
        allowed &= k > q - window
    return allowed[:, None]


@torch.inference_mode()
def forward_rows(model: LayeredModel, layers: LayerRange, rows: list[Row], embed: bool,
                 head: list[bool] | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Run `layers` over each row's new positions; advance each row's state.

    Args:
        model: the layered model.
        layers: the blocks to run.
        rows: the sessions and their new positions; all token ids when `embed`, else all hidden states.
        embed: whether the rows bring token ids to embed first.
        head: per row, whether to run the final norm and head on its last position.

    Returns:
        Each row's hidden states `(1, new, hidden)`, and the logits `(rows wanting the head, vocab)` or None.
    """
    past, new = [r.state.position for r in rows], [r.new for r in rows]
    new_max = max(new)
    query, key_pos = _positions(past, new, model.max_positions)
    if embed:
        ids = torch.zeros((len(rows), new_max), dtype=torch.long)
        for i, r in enumerate(rows):
            assert r.input_ids is not None, "an embedding batch takes token ids"
            ids[i, :new[i]] = r.input_ids.reshape(-1)
        hidden = model.embed(ids, query)  # (rows, new_max, hidden)
    elif len(rows) == 1:
        assert rows[0].hidden is not None
        hidden = rows[0].hidden.reshape(1, new[0], model.hidden_size)
    else:
        hidden = torch.zeros((len(rows), new_max, model.hidden_size))
        for i, r in enumerate(rows):
            assert r.hidden is not None, "a batch past the embeddings takes hidden states"
            hidden[i, :new[i]] = r.hidden.reshape(new[i], model.hidden_size)
    if len(layers):
        padded = len(set(past)) > 1 or len(set(new)) > 1
        hidden = run_blocks(model, layers, hidden, _BatchCache(rows, past, new), query, key_pos,
                            masked=padded or new_max > 1)
    for r, n in zip(rows, new, strict=True):
        r.state.position += n
    outs = [hidden[i:i + 1, :n] for i, n in enumerate(new)]
    logits = None
    if head is not None and any(head):
        logits = head_logits(model, torch.stack([hidden[i, n - 1] for i, n in enumerate(new) if head[i]]))
    return outs, logits


def head_logits(model: LayeredModel, last: torch.Tensor) -> torch.Tensor:
    """Final norm and head on last positions `(rows, hidden)`: logits `(rows, vocab)`."""
    return model.lm_head(model.norm(last[:, None, :]))[:, -1, :]


def run_blocks(model: LayeredModel, layers: LayerRange, hidden: torch.Tensor, cache: Any, query: torch.Tensor,
               key_pos: torch.Tensor, masked: bool) -> torch.Tensor:
    """The blocks over `hidden` `(rows, new, hidden)` with a cache stand-in; query positions `(rows, new)`, key
    positions `(rows, keys)` (-1: none). Without `masked` (one position each, every key valid) no mask is built,
    as the unbatched model runs a decode step; sliding-window layers always get theirs."""
    masks: dict[str, torch.Tensor | None] = {}
    types = model.layer_types if isinstance(model, LlamaLayered) else ["full_attention"] * model.num_layers
    for kind in {types[i] for i in layers}:
        window = getattr(model.config, "sliding_window", None) if kind == "sliding_attention" else None
        masks[kind] = _mask(query, key_pos, window) if masked or window is not None else None
    if isinstance(model, LlamaLayered):
        rotary = model.inner.rotary_emb(hidden, query)  # (cos, sin), each (rows, new, head_dim)
        for i in layers:
            hidden = _first(model.blocks[i](hidden, attention_mask=masks[types[i]], position_embeddings=rotary,
                                            position_ids=query, past_key_values=cache, use_cache=True))
    else:
        for i in layers:
            hidden = _first(model.blocks[i](hidden, cache, masks[types[i]], use_cache=True, position_ids=query))
    return hidden  # (rows, new, hidden)

"""One forward of a block range over the next positions of several sessions, each with its own KV cache.

Rows are sessions at different cache lengths, each bringing one position (decode) or a chunk of its prompt
(prefill). A group of rows attends together: their caches are gathered left-padded into one tensor per block,
`(rows, kv_heads, past + new, head_dim)`, and a boolean attention mask built from each row's absolute positions
hides the padding, keeps the new positions causal (and, for sliding-window layers, inside the window). This is
the padding-with-mask way `transformers` itself batches prompts of different lengths: the blocks are the
`transformers` modules, their attention is its SDPA path, and nothing here computes attention by hand. Decode
rows on a running batch (`splitcore.slots`) need no gather; a lone session passes its own storage as is.

Several groups (the decode rows, and each prompt chunk) run in one forward packed without padding
(`run_packed`): the linear layers see every position once, and the attention runs per group.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

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


@dataclass
class Group:
    """Rows that attend together, padded to `(rows, new_max)` as `run_blocks` takes them: their hidden states,
    query and key positions, the cache stand-in that holds their keys, and how many positions each row really
    brings (the rest is padding)."""

    hidden: torch.Tensor  # (rows, new_max, hidden)
    query: torch.Tensor  # (rows, new_max)
    keys: torch.Tensor  # (rows, keys): each key column's position, -1 for none
    cache: Any  # `update(keys, values, layer_idx)` -> the rows' keys and values, as a `transformers` Cache
    new: list[int]
    masked: bool


def prompt_group(model: LayeredModel, rows: list[Row], embed: bool) -> Group:
    """Rows on their sessions' own caches (prompt chunks, or decode steps outside a running batch), padded to the
    longest: the group `forward_rows` runs. Nothing is appended to the sessions until the blocks run."""
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
    padded = len(set(past)) > 1 or len(set(new)) > 1
    return Group(hidden, query, key_pos, _BatchCache(rows, past, new), new, masked=padded or new_max > 1)


def finish_rows(rows: list[Row], hidden: torch.Tensor) -> list[torch.Tensor]:
    """Advance each row's state past its new positions; each row's hidden states `(1, new, hidden)`."""
    outs = []
    for i, r in enumerate(rows):
        r.state.position += r.new
        outs.append(hidden[i:i + 1, :r.new])
    return outs


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
    group = prompt_group(model, rows, embed)
    outs = finish_rows(rows, run_group(model, layers, group))
    logits = None
    if head is not None and any(head):
        logits = head_logits(model, torch.stack([o[0, -1] for o, h in zip(outs, head, strict=True) if h]))
    return outs, logits


def run_group(model: LayeredModel, layers: LayerRange, group: Group) -> torch.Tensor:
    """The blocks over one group on its own: hidden states `(rows, new_max, hidden)`."""
    if not len(layers):
        return group.hidden
    masks = _masks(model, layers, group.query, group.keys, group.masked)
    return run_blocks(model, layers, group.hidden, group.cache, group.query, masks)


def head_logits(model: LayeredModel, last: torch.Tensor) -> torch.Tensor:
    """Final norm and head on last positions `(rows, hidden)`: logits `(rows, vocab)`."""
    return model.lm_head(model.norm(last[:, None, :]))[:, -1, :]


def _masks(model: LayeredModel, layers: LayerRange, query: torch.Tensor, key_pos: torch.Tensor, masked: bool
           ) -> dict[str, torch.Tensor | None]:
    """Each kind of layer's mask in `layers` (None: every key valid, one position each)."""
    masks: dict[str, torch.Tensor | None] = {}
    for kind in {_kinds(model)[i] for i in layers}:
        window = getattr(model.config, "sliding_window", None) if kind == "sliding_attention" else None
        masks[kind] = _mask(query, key_pos, window) if masked or window is not None else None
    return masks


def _kinds(model: LayeredModel) -> list[str]:
    return model.layer_types if isinstance(model, LlamaLayered) else ["full_attention"] * model.num_layers


def run_blocks(model: LayeredModel, layers: LayerRange, hidden: torch.Tensor, cache: Any, query: torch.Tensor,
               masks: dict[str, torch.Tensor | None], **attention: Any) -> torch.Tensor:
    """The blocks over `hidden` `(rows, new, hidden)` with a cache stand-in; query positions `(rows, new)`, and
    each kind of layer's mask (`_masks`; none for a kind that is missing). `attention` goes to each block's
    attention function (the packed forward's plan, which holds its groups' masks)."""
    types = _kinds(model)
    if isinstance(model, LlamaLayered):
        rotary = model.inner.rotary_emb(hidden, query)  # (cos, sin), each (rows, new, head_dim)
        for i in layers:
            hidden = _first(model.blocks[i](hidden, attention_mask=masks.get(types[i]), position_embeddings=rotary,
                                            position_ids=query, past_key_values=cache, use_cache=True,
                                            **attention))
    else:
        for i in layers:
            hidden = _first(model.blocks[i](hidden, cache, masks.get(types[i]), use_cache=True, position_ids=query,
                                            **attention))
    return hidden  # (rows, new, hidden)


# One forward over groups that attend apart: the blocks' linear layers (most of the work, and on a small model
# most of the Python per block) run once over every group's positions packed into one sequence, without
# padding; each attention layer then splits the packed queries by group and runs `transformers`' SDPA attention
# on each group with its own keys and mask. This is how vLLM runs decode steps and prompt chunks in one forward
# (a packed batch, attention per sequence), with `transformers`' attention-function registry
# (`AttentionInterface`) as the hook, and nothing computing attention by hand.
_PACKED = "edgesplit_packed"


class _Packed:
    """The plan of one packed forward; it stands in for the Cache too (each group's own stand-in underneath)."""

    def __init__(self, model: LayeredModel, layers: LayerRange, groups: list[Group]) -> None:
        self.groups, self.kinds = groups, _kinds(model)
        self.index: list[torch.Tensor | None] = []  # per group: its real positions in (rows * new_max), or all
        self.slices: list[slice] = []
        start = 0
        for g in groups:
            rows, new_max = g.query.shape
            if all(n == new_max for n in g.new):
                self.index.append(None)
                count = rows * new_max
            else:
                real = torch.arange(new_max)[None, :] < torch.tensor(g.new)[:, None]
                self.index.append(real.reshape(-1).nonzero().squeeze(1))
                count = sum(g.new)
            self.slices.append(slice(start, start + count))
            start += count
        self.masks = [_masks(model, layers, g.query, g.keys, g.masked) for g in groups]
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = [(torch.empty(0), torch.empty(0))] * len(groups)

    def pack(self, padded: list[torch.Tensor]) -> torch.Tensor:
        """Each group's `(rows, new_max, ...)` -> `(1, positions, ...)`, padding left out."""
        flat = [t.reshape(-1, *t.shape[2:]) for t in padded]
        return torch.cat([f if i is None else f[i] for f, i in zip(flat, self.index, strict=True)])[None]

    def unpack(self, g: int, packed: torch.Tensor) -> torch.Tensor:
        """Group `g`'s positions of a packed `(positions, ...)` -> `(rows, new_max, ...)`, zeros in the padding."""
        rows, new_max = self.groups[g].query.shape
        part, index = packed[self.slices[g]], self.index[g]
        if index is None:
            return part.reshape(rows, new_max, *part.shape[1:])
        out = part.new_zeros((rows * new_max, *part.shape[1:]))
        out[index] = part
        return out.reshape(rows, new_max, *part.shape[1:])

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        # keys, values: (1, kv_heads, positions, head_dim) -> each group's (rows, kv_heads, new_max, head_dim)
        for g, group in enumerate(self.groups):
            k = self.unpack(g, keys[0].transpose(0, 1)).transpose(1, 2)
            v = self.unpack(g, values[0].transpose(0, 1)).transpose(1, 2)
            self.kv[g] = group.cache.update(k, v, layer_idx)
        return keys, values  # the attention reads `self.kv`

    def attend(self, module: torch.nn.Module, query: torch.Tensor, scaling: float | None
               ) -> tuple[torch.Tensor, None]:
        # query: (1, heads, positions, head_dim) -> output (1, positions, heads, head_dim)
        kind = self.kinds[int(getattr(module, "layer_idx"))]  # noqa: B009 (set by every family's attention)
        outs = []
        for g in range(len(self.groups)):
            q = self.unpack(g, query[0].transpose(0, 1)).transpose(1, 2)  # (rows, heads, new_max, head_dim)
            keys, values = self.kv[g]
            out, _ = sdpa_attention_forward(module, q, keys, values, self.masks[g][kind], scaling=scaling)
            flat, index = out.reshape(-1, *out.shape[2:]), self.index[g]  # (rows * new_max, heads, head_dim)
            outs.append(flat if index is None else flat[index])
        return torch.cat(outs)[None], None


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """SDPA attention, per group inside a packed forward."""
    plan = kwargs.pop(_PACKED, None)
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return plan.attend(module, query, scaling)


AttentionInterface.register(_PACKED, _attention)


def enable_packing(model: LayeredModel) -> bool:
    """Let `model`'s blocks run packed forwards (`run_packed`); False when they cannot (an attention other than
    SDPA), and then groups run one forward each. Only the blocks' attention modules see the change: the model's
    own forward, its masks and the ONNX export keep their configuration, and outside a packed forward the
    attention is the same SDPA function as before."""
    attentions = [m for block in model.blocks for m in block.modules() if type(m).__name__.endswith("Attention")]
    if not attentions or model.config._attn_implementation != "sdpa":
        return False
    packed = copy.copy(model.config)
    packed._attn_implementation = _PACKED
    for m in attentions:
        setattr(m, "config", packed)  # noqa: B010 (a module attribute, not a parameter: mypy types it as one)
    return True


@torch.inference_mode()
def run_packed(model: LayeredModel, layers: LayerRange, groups: list[Group]) -> list[torch.Tensor]:
    """The blocks over several groups in one forward (`enable_packing` first); each group's hidden states
    `(rows, new_max, hidden)`, as `run_group` gives them at its real positions (callers read no others)."""
    if len(groups) == 1 or not len(layers):
        return [run_group(model, layers, g) for g in groups]
    plan = _Packed(model, layers, groups)
    hidden = plan.pack([g.hidden for g in groups])  # (1, positions, hidden)
    query = plan.pack([g.query for g in groups])  # (1, positions)
    hidden = run_blocks(model, layers, hidden, plan, query, {}, **{_PACKED: plan})  # each group's masks: the plan
    return [plan.unpack(g, hidden[0]) for g in range(len(groups))]

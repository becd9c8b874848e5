"""The running batch of one block range: the KV caches of its decoding sessions, kept together between rounds.

Gathering every session's cache into a padded batch tensor each step copies the whole cache per step (measured:
about a third of a 32-session decode step of the shipped model). Here the sessions that decode on a range share
one tensor per block, `(slots, kv_heads, columns, head_dim)`, as a static cache does: each session owns a row (a
slot), and every decode round writes all rows' new keys into the next column. A key position map `(slots,
columns)` says which position each column holds for each row (-1: none), so rows of different lengths, rows that
skipped a round and free rows are masked per row; the attention is `transformers`' own SDPA path with that mask.

A session joins after its prompt (its own cache, `splitcore.kvcache`, is copied into a free row once) and
leaves when it ends (its row is freed when its state is dropped) or sends several positions at once (its keys
are copied back out). Rows of sessions that skipped a round compute a throw-away position; the rows are compacted
when fewer than half are used, columns when the oldest live column is far behind, and rows are repacked without
their holes when those make the span over twice the longest row.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from splitcore.batched import Group, run_group
from splitcore.kvcache import SessionKV, TorchState
from splitcore.layered import LayeredModel
from splitcore.ranges import LayerRange

_MIN_COLUMNS = 64


class SlotBatch:
    """The running batch of one block range (and whether it starts at the embeddings)."""

    def __init__(self, model: LayeredModel, layers: LayerRange) -> None:
        self.model, self.layers = model, layers
        self.keys: dict[int, torch.Tensor] = {}  # block -> (slots, kv_heads, columns, head_dim)
        self.values: dict[int, torch.Tensor] = {}
        self.positions = torch.full((0, 0), -1, dtype=torch.long)  # (slots, columns): a key's position, or -1
        self.owners: list[weakref.ref[TorchState] | None] = []
        self.end = 0  # columns written so far; the next round writes column `end`
        self.held = 0  # rows held by a session (its state may have been dropped since: see `free_dead`)
        self.nbytes = 0  # bytes reserved for every row's keys and values (recounted when the storage changes)

    def holds(self, state: TorchState) -> bool:
        return state.slot is not None and state.slot[0] is self

    def decode(self, states: list[TorchState], x: torch.Tensor, embed: bool) -> torch.Tensor:
        """One position for each of `states` (token ids `(n,)` when `embed`, else hidden states `(n, hidden)`).

        Returns the hidden states `(n, hidden)`; each state's position advances by one.
        """
        group, finish = self.prepare(states, x, embed)
        return finish(run_group(self.model, self.layers, group))

    def prepare(self, states: list[TorchState], x: torch.Tensor, embed: bool
                ) -> tuple[Group, Callable[[torch.Tensor], torch.Tensor]]:
        """The group a decode round of `states` runs (`splitcore.batched.run_group`, or packed with prompt chunks
        by `run_packed`), and what turns its output into each state's hidden state `(n, hidden)`, advancing them.
        Nothing else may touch this batch between the two."""
        self.free_dead()
        for state in states:
            if not self.holds(state):
                self._join(state)
        self._fit()
        rows = torch.tensor([state.slot[1] for state in states])  # type: ignore[index]
        used, end = self._used(), self.end
        pick: torch.Tensor | slice
        if 2 * len(states) <= used:
            # most rows sit this round out: only the stepping ones run, over a gathered copy of their keys (a
            # forward over every row would compute a throw-away position for each idle one: with 64 sessions in
            # 4 cohorts of 16, three quarters of the work); the copy costs about what the attention reads anyway
            query = torch.tensor([[s.position] for s in states])  # (n, 1)
            keys = self.positions[rows, :end + 1].clone()
            keys[:, end] = query[:, 0]
            hidden = self.model.embed(x.reshape(-1, 1), query) if embed else x.reshape(len(states), 1, -1)
            positions, pick, cache = query[:, 0], slice(None), _SlotCache(self, rows, end)
        else:
            query = torch.zeros((used, 1), dtype=torch.long)
            query[rows, 0] = torch.tensor([s.position for s in states])  # free and idle rows: a throw-away position
            keys = self.positions[:used, :end + 1].clone()
            keys[:, end] = query[:, 0]
            if embed:
                ids = torch.zeros((used, 1), dtype=torch.long)
                ids[rows, 0] = x.reshape(-1)
                hidden = self.model.embed(ids, query)  # (used, 1, hidden)
            else:
                hidden = torch.zeros((used, 1, self.model.hidden_size))
                hidden[rows, 0] = x.reshape(len(states), -1)
            positions, pick, cache = query[rows, 0], rows, _SlotCache(self, slice(0, used), end)
        group = Group(hidden, query, keys, cache, [1] * int(query.shape[0]), masked=bool((keys < 0).any()))

        def finish(out: torch.Tensor) -> torch.Tensor:
            self._advance(states, rows, positions, end)
            return out[pick, 0]  # (n, hidden)
        return group, finish

    def _advance(self, states: list[TorchState], rows: torch.Tensor, positions: torch.Tensor, end: int) -> None:
        self.positions[rows, end] = positions
        self.end = end + 1
        for state in states:
            state.position += 1

    def leave(self, state: TorchState) -> None:
        """Copy a session's keys back to its own cache and free its row."""
        assert state.slot is not None and state.slot[0] is self
        row = state.slot[1]
        held = self.positions[row] >= 0  # (columns,)
        state.kv = SessionKV()
        for b in self.layers:
            state.kv.append(b, self.keys[b][row:row + 1, :, held], self.values[b][row:row + 1, :, held])
        self._release(row)
        state.slot = None

    def _join(self, state: TorchState) -> None:
        length = state.position
        assert length > 0 and state.slot is None, "a session joins with its prompt's keys"
        if not self.keys:
            for b in self.layers:
                k = state.kv.keys[b]  # (1, kv_heads, capacity, head_dim)
                self.keys[b] = k.new_zeros((0, k.shape[1], 0, k.shape[3]))
                self.values[b] = k.new_zeros((0, k.shape[1], 0, k.shape[3]))
        free = [r for r, ref in enumerate(self.owners) if ref is None]
        if not free or length > self.end:
            rows = len(self.owners) + (0 if free else max(1, len(self.owners)))  # doubled when full
            shift = max(0, length - self.end)
            self._relayout(list(range(len(self.owners))), rows=rows, shift=shift,
                           columns=max(self.positions.shape[1], self.end + shift + _MIN_COLUMNS))
            free = [r for r, ref in enumerate(self.owners) if ref is None]
        row = free[0]
        start = self.end - length
        for b in self.layers:
            keys, values = state.kv.view(b)  # type: ignore[misc]
            self.keys[b][row, :, start:self.end] = keys[0]
            self.values[b][row, :, start:self.end] = values[0]
        self.positions[row] = -1
        self.positions[row, start:self.end] = torch.arange(length)
        self.owners[row] = weakref.ref(state)
        self.held += 1
        state.slot, state.kv = (self, row), SessionKV()

    def _fit(self) -> None:
        """Room for one more column; rows and columns compacted when mostly unused."""
        used = self._used()
        live = [r for r in range(used) if self.owners[r] is not None]
        held = self.positions[live, :self.end] >= 0  # (live, columns written)
        first = int(held.any(dim=0).nonzero()[0]) if bool(held.any()) else self.end
        longest = int(held.sum(dim=1).max()) if live else 0
        if self.end - first > 2 * longest + 16:  # rows that skipped rounds: over half their span is holes
            self._repack(live)
            return
        sparse = used >= 8 and len(live) < used // 2
        full = self.end >= self.positions.shape[1]
        if not full and not sparse:
            return
        span = self.end - first
        keep = live if sparse else list(range(len(self.owners)))
        self._relayout(keep, rows=len(keep), shift=-first,
                       columns=max(_MIN_COLUMNS, 2 * (span + 1)) if full else self.positions.shape[1])

    def _repack(self, live: list[int]) -> None:
        """Copy each live row's keys to the right of fresh storage, with no gaps: what a padded batch gathers
        every step, done once the rows' holes (rounds they skipped) make the span over twice the longest row."""
        held = self.positions[live] >= 0  # (live, columns)
        lengths = held.sum(dim=1).tolist()
        longest = max(lengths, default=0)
        columns = max(_MIN_COLUMNS, 2 * longest + 1)
        for store in (self.keys, self.values):
            for b, old in store.items():
                new = old.new_zeros((len(live), old.shape[1], columns, old.shape[3]))
                for j, r in enumerate(live):
                    new[j, :, longest - lengths[j]:longest] = old[r][:, held[j]]
                store[b] = new
        positions = torch.full((len(live), columns), -1, dtype=torch.long)
        for j, r in enumerate(live):
            positions[j, longest - lengths[j]:longest] = self.positions[r][held[j]]
        self.positions = positions
        self._recount()
        self.owners = [self.owners[r] for r in live]
        for j, ref in enumerate(self.owners):
            state = ref() if ref is not None else None
            if state is not None:
                state.slot = (self, j)
        self.end = longest

    def _relayout(self, keep: list[int], rows: int, shift: int, columns: int) -> None:
        """New storage of `rows` x `columns`: rows `keep` in order, their columns moved by `shift`."""
        lo = max(0, -shift)  # first old column kept
        width = self.end - lo
        index = torch.tensor(keep, dtype=torch.long)
        for store in (self.keys, self.values):
            for b, old in store.items():
                new = old.new_zeros((rows, old.shape[1], columns, old.shape[3]))
                if keep and width > 0:
                    new[:len(keep), :, lo + shift:lo + shift + width] = old.index_select(0, index)[:, :, lo:self.end]
                store[b] = new
        positions = torch.full((rows, columns), -1, dtype=torch.long)
        if keep and width > 0:
            positions[:len(keep), lo + shift:lo + shift + width] = self.positions.index_select(0, index)[:, lo:self.end]
        self.positions = positions
        self._recount()
        owners: list[weakref.ref[TorchState] | None] = [self.owners[r] for r in keep]
        self.owners = owners + [None] * (rows - len(keep))
        for r, ref in enumerate(self.owners):
            state = ref() if ref is not None else None
            if state is not None:
                state.slot = (self, r)
        self.end = lo + shift + width

    def _recount(self) -> None:
        self.nbytes = sum(t.numel() * t.element_size() for store in (self.keys, self.values) for t in store.values())

    def _used(self) -> int:
        """Rows a forward runs over: up to the last occupied one."""
        return max((r + 1 for r, ref in enumerate(self.owners) if ref is not None), default=0)

    def free_dead(self) -> None:
        """Free the rows of sessions that have ended (their states are gone)."""
        for r, ref in enumerate(self.owners):
            if ref is not None and ref() is None:  # the session ended: its state is gone
                self._release(r)

    def _release(self, row: int) -> None:
        self.held -= self.owners[row] is not None
        self.owners[row] = None
        self.positions[row] = -1


class _SlotCache:
    """Stands in for a `transformers` Cache: writes the rows' new keys into column `end` and returns the rows'
    keys and values up to it: a slice of rows as views (no copy), or a tensor of row indices, gathered."""

    def __init__(self, batch: SlotBatch, rows: slice | torch.Tensor, end: int) -> None:
        self.batch, self.rows, self.end = batch, rows, end

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.batch.keys[layer_idx], self.batch.values[layer_idx]
        k[self.rows, :, self.end] = keys[:, :, 0]
        v[self.rows, :, self.end] = values[:, :, 0]
        return k[self.rows, :, :self.end + 1], v[self.rows, :, :self.end + 1]


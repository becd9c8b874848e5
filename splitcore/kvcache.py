"""One session's keys and values per block, stored with room to grow so a decode step appends in place.

A `transformers` `DynamicCache` concatenates each new position onto the whole cache (a copy of it per step);
here a block's keys live in a tensor with spare capacity (grown by doubling), and a step writes its new rows
into it. A batch of sessions reads each session's valid prefix (`view`) into its padded batch tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

_MIN_CAPACITY = 64  # positions reserved at the first step of a block, so short decodes never reallocate


@dataclass
class SessionKV:
    """Keys and values of the blocks one session runs on one tier, `(1, kv_heads, capacity, head_dim)` each."""

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    lengths: dict[int, int] = field(default_factory=dict)  # block -> positions held

    def view(self, block: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The block's keys and values `(1, kv_heads, length, head_dim)`, without copying; None before any."""
        if block not in self.keys:
            return None
        n = self.lengths[block]
        return self.keys[block][:, :, :n], self.values[block][:, :, :n]

    def append(self, block: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new positions `(1, kv_heads, new, head_dim)` after the held ones; return the whole valid view."""
        new = keys.shape[2]
        n = self.lengths.get(block, 0)
        stored = self.keys.get(block)
        if stored is None or n + new > stored.shape[2]:
            self._grow(block, keys, n + new)
        self.keys[block][:, :, n:n + new] = keys
        self.values[block][:, :, n:n + new] = values
        self.lengths[block] = n + new
        view = self.view(block)
        assert view is not None
        return view

    def truncate(self, length: int) -> None:
        """Keep the first `length` positions of every block (a speculative step's rejected positions dropped);
        the storage stays, so the next step writes over them."""
        for block, held in self.lengths.items():
            self.lengths[block] = min(held, length)

    def _grow(self, block: int, like: torch.Tensor, needed: int) -> None:
        stored = self.keys.get(block)
        capacity = max(_MIN_CAPACITY, needed, 2 * (stored.shape[2] if stored is not None else 0))
        shape = (1, like.shape[1], capacity, like.shape[3])
        keys, values = torch.empty(shape, dtype=like.dtype), torch.empty(shape, dtype=like.dtype)
        if stored is not None:
            n = self.lengths[block]
            keys[:, :, :n] = stored[:, :, :n]
            values[:, :, :n] = self.values[block][:, :, :n]
        self.keys[block], self.values[block] = keys, values

    @property
    def valid_nbytes(self) -> int:
        """Bytes of the positions held (what the cache grows by per position, without the spare capacity)."""
        return sum(self.nbytes_of(b) * self.lengths[b] // self.keys[b].shape[2] for b in self.keys)

    def nbytes_of(self, block: int) -> int:
        """Bytes reserved for one block's keys and values."""
        return sum(t.numel() * t.element_size() for t in (self.keys[block], self.values[block]))

    @property
    def nbytes(self) -> int:
        """Bytes reserved (capacity, not just the valid positions): what the session costs in memory."""
        return sum(t.numel() * t.element_size() for store in (self.keys, self.values) for t in store.values())


@dataclass
class TorchState:
    """One session's state on one tier with PyTorch: its keys and values and how many positions it holds."""

    kv: SessionKV = field(default_factory=SessionKV)  # its own cache: empty while it holds a slot
    position: int = 0
    cache_bytes: int = 0
    slot: tuple[Any, int] | None = None  # (the running batch `splitcore.slots.SlotBatch`, its row) while decoding

    def truncate(self, position: int) -> None:
        """Roll back to `position` positions (at most the held ones); the session must not hold a slot of a
        running batch (`splitcore.batching.Batcher.truncate` takes it out first)."""
        assert self.slot is None, "a session in a running batch is rolled back through its batcher"
        assert 0 <= position <= self.position, f"cannot roll back to {position} from {self.position}"
        self.kv.truncate(position)
        self.position = position

    def measure(self) -> int:
        """Recount the bytes reserved by the cache (its share of a running batch's storage included)."""
        shared = 0
        if self.slot is not None:
            batch = self.slot[0]
            shared = batch.nbytes // max(1, batch.held)
        self.cache_bytes = self.kv.nbytes + shared
        return self.cache_bytes

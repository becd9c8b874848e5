"""Continuous batching of shard steps, as vLLM and TGI schedule decode steps of different requests.

Callers (the cloud's request handlers, the edge's generations) submit a step: a session's state, a block range
and its new positions. One worker thread runs rounds: while a round runs, new steps queue; the next round takes
every waiting step of the oldest step's block range (up to `max_batch` rows and `max_tokens` positions). A
round's decode steps (one position each) run as one forward; its prompts run as a second forward, cut into
chunks of at most `prefill_chunk` positions, so a long prompt holds the running streams up for one chunk at a
time, never for the whole prompt. Decode steps and prompt chunks are not padded into one forward: rows are
padded to the longest, and padding 32 one-position rows to a 256-position chunk would cost 256x their work.

A step alone in its round runs at once on its session's own cache (`splitcore.batched`), so batching costs
a lone stream nothing but the hand-off to the worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from splitcore.batched import Row, forward_rows
from splitcore.kvcache import TorchState
from splitcore.layered import LayeredModel
from splitcore.ranges import LayerRange

log = logging.getLogger(__name__)

Result = tuple[torch.Tensor, torch.Tensor | None]  # hidden (1, new, hidden); logits (1, vocab) when the head ran
BatchObserver = Callable[[int, int, list[float]], None]  # (rows, positions, each new step's queue wait in s)


@dataclass(frozen=True)
class BatchLimits:
    """How big one forward may get."""

    max_batch: int = 64  # sessions in one forward
    max_tokens: int = 1024  # positions in one forward (decode rows count one each)
    prefill_chunk: int = 256  # a prompt runs at most this many positions per round

    def __post_init__(self) -> None:
        assert self.max_batch >= 1 and self.prefill_chunk >= 1, "batches hold at least one position"
        assert self.max_tokens >= self.max_batch, "the position budget must admit a full batch of decode steps"


@dataclass(eq=False)
class _Step:
    state: TorchState
    layers: LayerRange
    embed: bool
    x: torch.Tensor  # token ids (new,) when embed, else hidden states (new, hidden)
    head: bool
    future: Future[Result]
    enqueued: float
    started: bool = False
    done: int = 0  # positions already run
    outputs: list[torch.Tensor] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return int(self.x.shape[0]) - self.done


class Batcher:
    """Runs submitted steps of one model in continuous batches on one worker thread."""

    def __init__(self, model: LayeredModel, limits: BatchLimits | None = None,
                 observer: BatchObserver | None = None) -> None:
        self.model = model
        self.limits = limits or BatchLimits()
        self.observer = observer
        self.last_batch_rows = 0  # rows of the latest forward, for health and dashboards
        self._queue: list[_Step] = []
        self._cv = threading.Condition()
        self._worker: threading.Thread | None = None

    def submit(self, state: TorchState, layers: LayerRange, *, hidden: torch.Tensor | None = None,
               input_ids: torch.Tensor | None = None, head: bool = False) -> Future[Result]:
        """Queue a step; its future gives the hidden states of its new positions (and the logits of the last).

        Cancelling the future before its step starts takes it out of the queue.
        """
        assert (hidden is None) != (input_ids is None), "pass exactly one of hidden states or token ids"
        embed = input_ids is not None
        x = input_ids.reshape(-1) if input_ids is not None else hidden.reshape(-1, self.model.hidden_size)  # type: ignore[union-attr]
        assert x.shape[0] >= 1, "a step brings at least one position"
        step = _Step(state, layers, embed, x, head, Future(), time.perf_counter())
        with self._cv:
            self._queue.append(step)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="batcher", daemon=True)
                self._worker.start()
            self._cv.notify()
        return step.future

    def run(self, state: TorchState, layers: LayerRange, *, hidden: torch.Tensor | None = None,
            input_ids: torch.Tensor | None = None, head: bool = False) -> Result:
        """Submit a step and wait for it."""
        return self.submit(state, layers, hidden=hidden, input_ids=input_ids, head=head).result()

    @property
    def waiting(self) -> int:
        """Steps queued or partly run."""
        with self._cv:
            return len(self._queue)

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                decode, prefill = self._take_locked()
            for group in (decode, prefill):
                if group:
                    self._forward(group)

    def _take_locked(self) -> tuple[list[tuple[_Step, int]], list[tuple[_Step, int]]]:
        """This round's decode steps and prompt chunks: (step, positions to run now) each."""
        limits = self.limits
        self._queue = [s for s in self._queue if s.started or not s.future.cancelled()]
        if not self._queue:
            return [], []
        key = (self._queue[0].layers, self._queue[0].embed)
        same = []
        for s in self._queue:
            if (s.layers, s.embed) != key:
                continue
            if not s.started:  # claimed once: from here on the step can no longer be cancelled
                s.started = s.future.set_running_or_notify_cancel()  # False: cancelled just now, dropped next round
            if s.started:
                same.append(s)
        decode = [(s, 1) for s in same if s.remaining == 1][:limits.max_batch]
        budget, prefill = limits.max_tokens - len(decode), list[tuple[_Step, int]]()
        for s in same:
            if s.remaining == 1 or len(prefill) + len(decode) >= limits.max_batch or budget <= 0:
                continue
            n = min(s.remaining, limits.prefill_chunk, budget)
            prefill.append((s, n))
            budget -= n
        return decode, prefill

    def _forward(self, group: list[tuple[_Step, int]]) -> None:
        steps = [s for s, _ in group]
        first = steps[0]
        now = time.perf_counter()
        waits = [now - s.enqueued for s in steps if s.done == 0]
        rows = []
        for s, n in group:
            chunk = s.x[s.done:s.done + n]
            rows.append(Row(s.state, input_ids=chunk) if s.embed else Row(s.state, hidden=chunk))
        heads = [s.head and s.done + n == s.x.shape[0] for s, n in group]
        self.last_batch_rows = len(rows)
        try:
            outs, logits = forward_rows(self.model, first.layers, rows, first.embed, heads)
        except Exception as exc:  # noqa: BLE001 (a failed forward fails its own steps, never the worker)
            log.exception("a batch of %d rows failed", len(rows))
            with self._cv:
                self._queue = [s for s in self._queue if s not in steps]
            for s in steps:
                s.future.set_exception(exc)
            return
        if self.observer is not None:
            self.observer(len(rows), sum(n for _, n in group), waits)
        finished, k = [], 0
        for (s, n), out, wants in zip(group, outs, heads, strict=True):
            s.done += n
            s.outputs.append(out)
            logit = None
            if wants:
                assert logits is not None
                logit, k = logits[k:k + 1], k + 1
            if s.remaining == 0:
                finished.append((s, logit))
        with self._cv:
            done = {id(s) for s, _ in finished}
            self._queue = [s for s in self._queue if id(s) not in done]
        for s, logit in finished:
            hidden = s.outputs[0] if len(s.outputs) == 1 else torch.cat(s.outputs, dim=1)
            s.future.set_result((hidden, logit))

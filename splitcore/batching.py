"""Continuous batching of shard steps, as vLLM and TGI schedule decode steps of different requests.

Callers (the cloud's request handlers, the edge's generations) submit a step: a session's state, a block range
and its new positions. Rounds run one at a time: while a round runs, new steps queue; the next round takes
every waiting step of the oldest step's block range (up to `max_batch` rows and `max_tokens` positions). A
prompt is cut into chunks of at most `prefill_chunk` positions, so a long prompt holds the running streams up
for one chunk at a time, never for the whole prompt. A round's decode steps (one position each) and prompt
chunks run as one forward, packed without padding (`splitcore.batched.run_packed`): padding 32 one-position
rows to a 256-position chunk would cost 256x their work. A decode step alone on its range (no other live session
decodes there) runs on its session's own cache, exactly as an unbatched step: batching costs a lone session
nothing, where the running batch's bookkeeping and masked attention cost it about 1.4x (per-block profile).

There is no worker thread. A thread that waits for its step leads: when no round is running it runs one
itself (with its own step and every other waiting one), else it sleeps until its step is done or the rounds are
free again. So a lone step runs in its caller's thread on its session's own cache (`splitcore.batched`): batching
costs it nothing. An asyncio server drives rounds from its event loop instead (`run_round`), so its requests
never cross threads: on a small model a forward is mostly Python, and threads would fight over the GIL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from splitcore.batched import (
    Group,
    Row,
    enable_packing,
    finish_rows,
    forward_rows,
    head_logits,
    prompt_group,
    run_packed,
    step_input,
)
from splitcore.kvcache import TorchState
from splitcore.layered import LayeredModel
from splitcore.ranges import LayerRange
from splitcore.slots import SlotBatch

log = logging.getLogger(__name__)


@contextmanager
def one_thread(wanted: bool) -> Iterator[None]:
    """Run the block on one torch intra-op thread when `wanted` (a small forward), then restore the count."""
    before = torch.get_num_threads()
    if not wanted or before == 1:
        yield
        return
    torch.set_num_threads(1)  # about 0.3 us: a call to omp_set_num_threads
    try:
        yield
    finally:
        torch.set_num_threads(before)

Result = tuple[torch.Tensor, torch.Tensor | None]  # hidden (1, new, hidden); logits (1, vocab) when the head ran
# (rows, positions, each new step's queue wait in s, the forward's own time in s)
BatchObserver = Callable[[int, int, list[float], float], None]


@dataclass(frozen=True)
class BatchLimits:
    """How big one forward may get."""

    max_batch: int = 64  # sessions in one forward
    max_tokens: int = 1024  # positions in one forward (decode rows count one each)
    prefill_chunk: int = 256  # a prompt runs at most this many positions per round
    # A forward whose positions x one block's parameters (its multiply-adds per block) is below this runs on one
    # intra-op thread. A tier's OpenMP threads sleep soon after a step (`splitcore.openmp`: an idle tier must not
    # spin on the cores the other one computes on), so the first parallel region of a forward wakes them.
    # `python bench/one_thread.py` with OMP_WAIT_POLICY=PASSIVE alone, where every region woke them (a round
    # after a 4 ms idle wait, 2 cores, 2 threads against 1; README has the bounded spin's figures): the shipped
    # model's 4 blocks 1.03-1.20x slower on 2 threads at 1-16 decode rows (up to 7 M), 0.91-0.99x at 32-64 rows
    # (14-28 M); the 124M model's 6 blocks 1.06-1.10x slower at 1-4 rows (7-28 M), 0.68-0.95x from 8 rows (57 M).
    one_thread_below: int = 32_000_000

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
    """Runs submitted steps of one model in continuous batches, one round at a time, in its callers' threads."""

    def __init__(self, model: LayeredModel, limits: BatchLimits | None = None,
                 observer: BatchObserver | None = None) -> None:
        self.model = model
        self.limits = limits or BatchLimits()
        self.observer = observer
        self.last_batch_rows = 0  # rows of the latest forward, for health and dashboards
        self._queue: list[_Step] = []
        self._cv = threading.Condition()
        self._rounds = threading.Lock()  # held by whoever runs a round
        self._running: dict[tuple[LayerRange, bool], SlotBatch] = {}  # each range's decoding sessions' caches
        self._packing = enable_packing(model)  # decode steps and prompt chunks in one forward
        self._params = 0  # one block's parameters, once a block is held (`_block_params`)

    def submit(self, state: TorchState, layers: LayerRange, *, hidden: torch.Tensor | None = None,
               input_ids: torch.Tensor | None = None, head: bool = False) -> Future[Result]:
        """Queue a step; its future gives the hidden states of its new positions (and the logits of the last).

        Someone must run rounds for it: `wait` (or `run`) in a thread, `run_round` from an event loop. Cancelling
        the future before its step starts takes it out of the queue.
        """
        x, embed = step_input(self.model, hidden, input_ids)
        assert x.shape[0] >= 1, "a step brings at least one position"
        step = _Step(state, layers, embed, x, head, Future(), time.perf_counter())
        with self._cv:
            self._queue.append(step)
        return step.future

    def run(self, state: TorchState, layers: LayerRange, *, hidden: torch.Tensor | None = None,
            input_ids: torch.Tensor | None = None, head: bool = False) -> Result:
        """Submit a step and wait for it, running rounds meanwhile whenever no other thread does."""
        return self.wait(self.submit(state, layers, hidden=hidden, input_ids=input_ids, head=head))

    def wait(self, future: Future[Result]) -> Result:
        """A submitted step's result, running rounds meanwhile whenever no other thread (or event loop) does.

        Raises:
            concurrent.futures.CancelledError: it was cancelled before it started.
        """
        while not future.done():
            if self._rounds.acquire(blocking=False):
                try:
                    self._round_locked()
                finally:
                    self._rounds.release()
                with self._cv:
                    self._cv.notify_all()  # the steps of this round are done; a waiter may lead the next
            else:
                with self._cv:  # the timeout only guards against a missed wake-up
                    self._cv.wait_for(lambda: future.done() or not self._rounds.locked(), timeout=0.05)
        return future.result()

    def run_round(self) -> int:
        """Run one round of the waiting steps now, in this thread (an event loop's driver); how many steps ran."""
        with self._rounds:
            ran = self._round_locked()
        with self._cv:
            self._cv.notify_all()
        return ran

    @torch.inference_mode()  # the running batches' tensors are inference tensors (`_round_locked`)
    def drop_idle(self) -> int:
        """Free the storage of running batches whose sessions have all ended (a burst's rows and columns would
        otherwise stay reserved until the next decode round of that range); how many were dropped."""
        with self._rounds:
            for batch in self._running.values():
                batch.free_dead()
            idle = [key for key, batch in self._running.items() if batch.held == 0]
            for key in idle:
                del self._running[key]
        return len(idle)

    @torch.inference_mode()
    def truncate(self, state: TorchState, position: int) -> None:
        """Roll a session back to `position` positions between rounds: out of its running batch first (its keys
        copied back to its own cache), then its cache cut. The caller holds the session: no step of it is queued."""
        with self._rounds:
            if state.slot is not None:
                state.slot[0].leave(state)
            state.truncate(position)

    @property
    def waiting(self) -> int:
        """Steps queued or partly run."""
        with self._cv:
            return len(self._queue)

    @torch.inference_mode()  # whichever thread or loop runs it: the running batches' tensors are always of one kind
    def _round_locked(self) -> int:
        with self._cv:
            decode, prefill = self._take_locked()
        if not self._packing and decode and prefill:  # each group its own forward
            self._forward(decode, [])
            self._forward([], prefill)
        elif decode or prefill:
            self._forward(decode, prefill)
        return len(decode) + len(prefill)

    def _compute(self, decode: list[tuple[_Step, int]], prefill: list[tuple[_Step, int]], heads: list[bool]
                 ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """One forward: decode steps on the range's running batch, prompt chunks on the sessions' own caches, each
        prompt its own attention group (no padding between prompts of different lengths) when packing."""
        first = (decode or prefill)[0][0]
        if len(decode) == 1 and not prefill and self._alone(first):
            decode, prefill = [], decode  # alone on its range: its own cache, as an unbatched step (no extra cost)
        rows = []
        for s, n in prefill:
            if s.state.slot is not None:  # several positions at once: back to its own cache for them
                s.state.slot[0].leave(s.state)
            rows.append(Row.of(s.state, s.x[s.done:s.done + n], s.embed))
        if not decode and (len(rows) == 1 or not self._packing):
            return forward_rows(self.model, first.layers, rows, first.embed, heads)
        groups: list[Group] = []
        if decode:
            batch = self._running.setdefault((first.layers, first.embed), SlotBatch(self.model, first.layers))
            x = torch.cat([s.x[s.done:s.done + 1] for s, _ in decode])
            group, finish = batch.prepare([s.state for s, _ in decode], x, first.embed)
            groups.append(group)
        out = run_packed(self.model, first.layers, groups + [prompt_group(self.model, [r], first.embed) for r in rows])
        outs: list[torch.Tensor] = []
        if decode:
            hidden = finish(out[0])  # (decode rows, hidden)
            outs = [hidden[i:i + 1, None] for i in range(len(decode))]
        outs += [o for r, g in zip(rows, out[len(groups):], strict=True) for o in finish_rows([r], g)]
        wanted = [o[0, -1] for o, h in zip(outs, heads, strict=True) if h]
        return outs, head_logits(self.model, torch.stack(wanted)) if wanted else None

    @property
    def _block_params(self) -> int:
        """One block's parameters (the largest held; a tier may hold none of them until it loads some)."""
        if not self._params:
            self._params = max((sum(p.numel() for p in b.parameters()) for b in self.model.blocks), default=0)
        return self._params

    def _alone(self, step: _Step) -> bool:
        """Whether no other live session decodes on `step`'s range (its running batch holds none but it)."""
        batch = self._running.get((step.layers, step.embed))
        if batch is None:
            return True
        batch.free_dead()
        return batch.held - batch.holds(step.state) == 0

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
        # one position of a session that holds keys: a decode step of the running batch (`splitcore.slots`)
        decode = [(s, 1) for s in same if s.remaining == 1 and s.state.position > 0][:limits.max_batch]
        taken = {id(s) for s, _ in decode}
        budget, prefill = limits.max_tokens - len(decode), list[tuple[_Step, int]]()
        for s in same:
            if id(s) in taken or len(prefill) + len(decode) >= limits.max_batch or budget <= 0:
                continue
            n = min(s.remaining, limits.prefill_chunk, budget)
            prefill.append((s, n))
            budget -= n
        return decode, prefill

    def _forward(self, decode: list[tuple[_Step, int]], prefill: list[tuple[_Step, int]]) -> None:
        group = decode + prefill
        steps = [s for s, _ in group]
        now = time.perf_counter()
        waits = [now - s.enqueued for s in steps if s.done == 0]
        heads = [s.head and s.done + n == s.x.shape[0] for s, n in group]
        self.last_batch_rows = len(group)
        try:
            with one_thread(sum(n for _, n in group) * self._block_params < self.limits.one_thread_below):
                outs, logits = self._compute(decode, prefill, heads)
            took = time.perf_counter() - now
        except Exception as exc:  # noqa: BLE001 (a failed forward fails its own steps, never the batcher)
            log.exception("a batch of %d rows failed", len(group))
            with self._cv:
                self._queue = [s for s in self._queue if s not in steps]
            for s in steps:
                s.future.set_exception(exc)
            return
        if self.observer is not None:
            self.observer(len(group), sum(n for _, n in group), waits, took)
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

"""The shard engine: one frame in, one frame out. Plain code, no HTTP, so tests call it directly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable

import torch
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from cloud_service.sessions import CloudSession, SessionStore
from splitcore.backends import Runners, TorchRunner
from splitcore.batching import Batcher
from splitcore.codec import DTYPE_BY_NAME
from splitcore.defaults import MIB, step_bound
from splitcore.errors import FrameError, ModelMismatchError, PlanError, SessionConflictError
from splitcore.kvcache import TorchState
from splitcore.loading import LoadedModel
from splitcore.ranges import LayerRange
from splitcore.sampling import Sampler
from splitcore.schema import SessionMeta
from splitcore.wire import Flags, Frame, FrameCodec, Kind, Limits, short_id

log = logging.getLogger(__name__)


class ShardEngine:
    """Runs the blocks an edge asks for over that edge session's own KV cache."""

    def __init__(self, loaded: LoadedModel, store: SessionStore, held: LayerRange | None = None,
                 limits: Limits | None = None, max_concurrent_steps: int | None = None,
                 runners: Runners | None = None, batch_wait_s: float = 0.25) -> None:
        self.model = loaded.layered
        self.runners = runners or Runners(self.model)  # torch or onnxruntime, as each session's opening frame asks
        self.loaded = loaded
        self.store = store
        self.limits = limits or Limits(max_cols=self.model.hidden_size)
        self.held = held or LayerRange(start=0, end=self.model.num_layers)
        self.max_positions = self.model.max_positions
        self._hold_lock = threading.Lock()
        self._local = threading.local()  # zstd contexts are not thread-safe: one decoder per worker thread
        # Unbatched (ONNX Runtime) steps of different sessions run in parallel up to this many (None: no bound).
        # Beyond about one per core they only thrash: on 2 cores, 16 sessions at once gave 54 tokens/s unbounded
        # and 88 with 2 at a time. Torch steps are batched instead (`splitcore.batching`).
        self._steps = step_bound(max_concurrent_steps)
        self._round: asyncio.Handle | None = None  # the torch batcher's next round, scheduled on the event loop
        self._submitted = 0  # steps submitted since start, to see whether any arrived in a loop iteration
        self._awaited: dict[uuid.UUID, None] = {}  # sessions answered by the last round, whose next step is due
        self._last_round_s = 0.0
        self._round_deadline = 0.0  # when a round that waits for due sessions runs at the latest
        self.batch_wait_s = batch_wait_s  # longest wait for them

    def _decoder(self) -> FrameCodec:
        codec = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = FrameCodec(limits=self.limits)
        return codec

    def forward(self, data: bytes, caller: str = "", *, timeout_s: float | None = None,
                session: uuid.UUID | None = None) -> bytes:
        """Decode a request frame, run its blocks for its session, encode the answer.

        `caller` is the edge (its token's name, or its address on an open cloud): a session it opens is its
        own, and its per-edge session limit counts it. `timeout_s` and `session` are there for the
        orchestrator's `CloudLink` protocol: in process there is no link to time out and one engine to route to.

        Raises:
            FrameError, PlanError, SessionNotFoundError, SessionConflictError, CapacityError.
        """
        received = time.perf_counter()
        frame = self._decoder().decode(data)
        self._check_frame(frame)
        held = self._open(frame, caller) if frame.position == 0 else self.store.get(frame.session, caller)
        return self.forward_frame(held, frame, received)

    @property
    def batch_size(self) -> int:
        """Sessions in the torch batcher's latest forward (0 before any)."""
        batcher = self.runners.batcher
        return batcher.last_batch_rows if batcher is not None else 0

    def hold(self, wanted: LayerRange, load: Callable[[], LoadedModel] | None,
             max_weights_bytes: int | None = None) -> LayerRange:
        """Make sure blocks `wanted` are in memory, loading the missing ones; return what is held now.

        Blocks are only added (the held range grows to cover both), so sessions running on the blocks held before
        go on undisturbed while an edge switches plans.

        Raises:
            PlanError: the blocks cannot be loaded here (no checkpoint, another model, over the weights budget).
        """
        with self._hold_lock:
            held = self.held
            if wanted.within(held):
                return held
            grown = LayerRange(start=min(held.start, wanted.start), end=max(held.end, wanted.end))
            if load is None:
                raise PlanError(f"this cloud holds blocks {held} and has no checkpoint to load {wanted} from")
            fresh = load()
            if fresh.fingerprint != self.loaded.fingerprint:
                raise PlanError("the checkpoint on disk is no longer the model this cloud serves; restart it")
            need = sum(p.numel() * p.element_size() for i in grown for p in fresh.layered.blocks[i].parameters())
            if max_weights_bytes is not None and need > max_weights_bytes:
                raise PlanError(f"blocks {grown} need {need / MIB:.1f} MiB of weights; this cloud's budget is "
                                f"{max_weights_bytes / MIB:.1f} MiB")
            for i in grown:
                if i not in range(held.start, held.end):
                    self.model.blocks[i] = fresh.layered.blocks[i]
            self.held = grown  # after the blocks are in place: frames are checked against it
            log.info("now holding blocks %s (asked for %s)", grown, wanted)
            return grown

    def end(self, sid: uuid.UUID, caller: str = "") -> bool:
        """Free a session's cache; False when it was not live or is another edge's."""
        removed = self.store.remove(sid, owner=caller)
        if removed:
            self._awaited.pop(sid, None)  # the next round need not wait for it
        return removed

    def _check_frame(self, frame: Frame) -> None:
        rows = frame.tensor.shape[0]
        if rows == 0:
            raise FrameError("a frame must carry at least one position")
        if not frame.layers.within(self.held):
            raise PlanError(f"this cloud holds blocks {self.held}; it cannot run {frame.layers}")
        if frame.kind == Kind.HIDDEN and frame.tensor.shape[1] != self.model.hidden_size:
            raise FrameError(f"hidden states are {frame.tensor.shape[1]} wide; this model's hidden size is "
                             f"{self.model.hidden_size}")
        if frame.kind == Kind.TOKENS:
            if frame.layers.start != 0:
                raise FrameError("token ids can only enter at block 0; send hidden states for later blocks")
            if int(frame.tensor.min()) < 0 or int(frame.tensor.max()) >= self.model.vocab_size:
                raise FrameError(f"token ids must be in [0, {self.model.vocab_size})")
        if Flags.HEAD in frame.flags and frame.layers.end != self.model.num_layers:
            raise PlanError(f"the head runs only after the last block ({self.model.num_layers}); got {frame.layers}")
        if frame.position + rows > self.max_positions:
            raise FrameError(f"positions up to {frame.position + rows} exceed the model's {self.max_positions}")

    def _open(self, frame: Frame, caller: str) -> CloudSession:
        try:
            meta = SessionMeta.model_validate_json(frame.meta) if frame.meta else SessionMeta()
        except ValidationError as exc:
            raise FrameError(f"bad session metadata: {exc.errors()[0]['msg']}") from exc
        self._check_weights(frame, meta.weights_digest)
        runner = self.runners.get(meta.backend)
        session = CloudSession(
            id=frame.session, layers=frame.layers, state=runner.new_state(), runner=runner,
            codec=FrameCodec(dtype=DTYPE_BY_NAME[meta.codec], zstd_level=meta.zstd_level, limits=self.limits),
            sampler=Sampler(meta.sampling) if Flags.HEAD in frame.flags else None, request_id=meta.request_id,
            owner=caller,
        )
        self.store.add(session)
        log.info("session %s opened for blocks %s on %s (request %r, edge %r)", short_id(session.id), frame.layers,
                 runner.name, meta.request_id, caller)
        return session

    def _check_weights(self, frame: Frame, expected: str) -> None:
        """Open a session only on the weights its edge expects: another model's answer must never be mixed in.

        Raises:
            FrameError: the opening frame names no digest.
            ModelMismatchError: the blocks (and embeddings or head) the frame asks for hold other weights here.
        """
        if not expected:
            raise FrameError("a session's first frame must name the weights digest it expects (meta.weights_digest)")
        held = self.loaded.digests.part(frame.layers, embed=frame.kind == Kind.TOKENS, head=Flags.HEAD in frame.flags)
        if held != expected:
            raise ModelMismatchError(f"this cloud holds other weights for blocks {frame.layers} than the edge "
                                     f"expects (model {self.loaded.name!r}, {self.loaded.fingerprint}); serve the "
                                     "same checkpoint on both tiers")

    async def forward_async(self, data: bytes, caller: str = "") -> bytes:
        """`forward` for an asyncio server: torch steps are batched by rounds this event loop runs (no thread
        hop, no fight over the GIL); other runtimes' steps run in the thread pool.

        Raises:
            FrameError, PlanError, SessionNotFoundError, SessionConflictError, CapacityError.
        """
        received = time.perf_counter()  # the answer reports the time from here: decode, queue, blocks, encode
        frame = self._decoder().decode(data)
        self._check_frame(frame)
        session = self._open(frame, caller) if frame.position == 0 else self.store.get(frame.session, caller)
        runner = session.runner
        if not isinstance(runner, TorchRunner) or runner.batcher is None or not isinstance(session.state, TorchState):
            return await run_in_threadpool(self.forward_frame, session, frame, received)
        if not session.lock.acquire(blocking=False):
            raise SessionConflictError(f"a step of session {short_id(session.id)} is running; send the next one "
                                       "after its answer")
        try:
            self._check_step(session, frame)
            x = {"input_ids": frame.tensor} if frame.kind == Kind.TOKENS else {"hidden": frame.tensor}
            future = runner.batcher.submit(session.state, frame.layers, head=Flags.HEAD in frame.flags, **x)
        except BaseException:
            session.lock.release()
            raise
        future.add_done_callback(lambda _: session.lock.release())  # not before: the step may outlive its caller
        self._awaited.pop(session.id, None)
        self._drive(runner.batcher)
        hidden, logits = await asyncio.wrap_future(future)
        self._awaited[session.id] = None  # its next step is due: the next round waits a little for it
        return self._answer(session, frame, hidden, logits, received)

    def _deadline(self) -> float:
        """When the next round runs at the latest: `batch_wait_s` after now, or half the last round's time if less
        (a session that misses a round waits a whole one; the others wait at most half of one for it)."""
        return time.perf_counter() + min(self.batch_wait_s, self._last_round_s / 2)

    def _drive(self, batcher: Batcher) -> None:
        """Run the batcher's rounds from this event loop while steps wait (one scheduled driver at a time)."""
        self._submitted += 1
        loop = asyncio.get_running_loop()
        if self._round is None:
            self._round = loop.call_soon(self._settle, batcher, self._deadline(), -1, 0)
        elif isinstance(self._round, asyncio.TimerHandle) and not self._due():
            self._round.cancel()  # the last session the round waited for is in: settle now
            self._round = loop.call_soon(self._settle, batcher, self._round_deadline, -1, 0)

    def _due(self) -> int:
        """Sessions of the last round that are live and have not sent their next step yet."""
        gone = [sid for sid in self._awaited if sid not in self.store]
        for sid in gone:
            del self._awaited[sid]
        return len(self._awaited)

    def _settle(self, batcher: Batcher, deadline: float, seen: int, quiet: int) -> None:
        """Run the next round once every session of the last round has sent its next step (or ended) and no step
        has arrived for two loop iterations (the frames already on the wire are read and queued by then), or at
        `deadline`. A session left out of a round waits a whole one: on the 124M model at 64 streams, rounds
        that started as soon as the loop was quiet split the streams into four cohorts of 16 taking turns (the
        others' frames were still on their way), at about half the tokens/s of full rounds. Until then the loop
        sleeps (a timer, no spinning: the edges may be on the same cores); a lone session waits for nobody, and
        the two iterations cost it about 30 us."""
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        if now >= deadline:
            self._run_round(batcher)
            return
        quiet = quiet + 1 if self._submitted == seen else 0
        if self._due():
            self._round_deadline = deadline
            self._round = loop.call_later(deadline - now, self._settle, batcher, deadline, self._submitted, 0)
        elif quiet >= 2:
            self._run_round(batcher)
        else:
            self._round = loop.call_soon(self._settle, batcher, deadline, self._submitted, quiet)

    def _run_round(self, batcher: Batcher) -> None:
        started = time.perf_counter()
        self._awaited.clear()  # from now on, wait for the sessions this round answers
        try:
            batcher.run_round()
        finally:
            self._round = None
            self._last_round_s = time.perf_counter() - started
            if batcher.waiting:
                self._round = asyncio.get_running_loop().call_soon(self._settle, batcher, self._deadline(),
                                                                   self._submitted, 0)

    def forward_frame(self, session: CloudSession, frame: Frame, received: float | None = None) -> bytes:
        """One decoded frame's step, in this thread, the session held; `received` is when its bytes arrived."""
        received = time.perf_counter() if received is None else received
        with session.lock, (contextlib.nullcontext() if session.runner.name == "torch" else self._steps):
            return self._step(session, frame, received)

    def _check_step(self, session: CloudSession, frame: Frame) -> None:
        """Refuse a frame that does not continue the session; apply a valid rollback first, and mark where this
        step begins (the next rollback may cut back to just after it)."""
        sid = short_id(session.id)
        if frame.layers != session.layers:
            raise SessionConflictError(f"session {sid} runs blocks {session.layers}, not {frame.layers}")
        if Flags.ROLLBACK in frame.flags:
            held = session.state.position
            if not session.step_start < frame.position <= held:
                raise SessionConflictError(
                    f"session {sid} cannot roll back to position {frame.position}: its last step ran positions "
                    f"{session.step_start} to {held - 1}, so a rollback keeps {session.step_start + 1} to {held}")
            session.runner.rollback(session.state, frame.position)
        if frame.position != session.state.position:
            raise SessionConflictError(f"session {sid} is at position {session.state.position}, frame starts at "
                                       f"{frame.position}")
        if Flags.HEAD in frame.flags and session.sampler is None:
            raise SessionConflictError(f"session {sid} was opened without the head")
        session.step_start = session.state.position

    def _step(self, session: CloudSession, frame: Frame, started: float) -> bytes:
        self._check_step(session, frame)
        runner = session.runner
        x = {"input_ids": frame.tensor} if frame.kind == Kind.TOKENS else {"hidden": frame.tensor}
        if Flags.HEAD in frame.flags:
            return self._answer(session, frame, None, runner.run_head(session.state, frame.layers, **x), started)
        return self._answer(session, frame, runner.run(session.state, frame.layers, **x), None, started)

    def _answer(self, session: CloudSession, frame: Frame, hidden: torch.Tensor | None, logits: torch.Tensor | None,
                started: float) -> bytes:
        """The answer frame: the sampled token when the head ran here, else the rows the edge needs."""
        if Flags.HEAD in frame.flags:
            assert session.sampler is not None and logits is not None
            position = frame.position + frame.tensor.shape[0]  # of the token sampled
            out: torch.Tensor = torch.tensor([session.sampler(logits, position=position)])
        else:
            assert hidden is not None
            out = hidden[0, -1:, :] if Flags.LAST_ROW in frame.flags else hidden[0]  # (rows, hidden)
        self.store.after_step(session)
        return session.codec.encode(session.id, frame.position, frame.layers, out, since=started)

    def end_session(self, session: uuid.UUID) -> None:
        """The `CloudLink` form of `end`, so the engine can serve an edge in process (tests, benchmarks)."""
        self.end(session)

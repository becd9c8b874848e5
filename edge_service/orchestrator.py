"""One generation across the tiers: edge front blocks, cloud middle, edge back blocks and head.

Plain code, no HTTP: the API layer iterates `Orchestrator.generate` in a
worker thread; tests and benchmarks call it directly, with either the HTTP
`CloudClient` or the cloud's `ShardEngine` in process as the link.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from edge_service.breaker import CloudBreaker
from edge_service.generation import Finished, FinishReason, GenerationRequest, LinkStats, Piece, TokenChoice
from edge_service.speculation import DepthTuner, DraftModel, SpeculationStats, speculate
from edge_service.textstream import TextStream
from profiling.acceptance import can_draft
from splitcore.backends import Runner, Runners, State
from splitcore.codec import DTYPE_BY_NAME
from splitcore.defaults import step_bound
from splitcore.errors import (
    CapacityError,
    CloudSessionLostError,
    CloudUnavailableError,
    EdgesplitError,
    SessionNotFoundError,
    UserError,
)
from splitcore.loading import LoadedModel
from splitcore.plan import Plan
from splitcore.ranges import LayerRange
from splitcore.sampling import Sampler
from splitcore.schema import SessionMeta
from splitcore.wire import Flags, FrameCodec, Kind, short_id

log = logging.getLogger(__name__)


class CloudLink(Protocol):
    """What the orchestrator needs of the cloud: one frame in, one frame out; and freeing a session."""

    def forward(self, frame: bytes, *, timeout_s: float | None = None, session: uuid.UUID | None = None
                ) -> bytes: ...

    def end_session(self, session: uuid.UUID) -> None: ...


@dataclass
class _Context:
    """Per-generation state on the edge: its caches, the cloud session, the counters."""

    plan: Plan
    session: uuid.UUID
    runner: Runner  # the edge's runtime for this generation (its plan's edge_backend)
    front: State
    back: State
    codec: FrameCodec
    sampler: Sampler
    meta: bytes
    position: int = 0
    opened: bool = False  # a frame was sent: the cloud may hold a session to end
    link: LinkStats = field(default_factory=LinkStats)
    fallback: str | None = None
    replays: int = 0
    top_logprobs: int | None = None  # alternatives to record per token; None: no log-probabilities
    logprobs: list[TokenChoice] = field(default_factory=list)
    spec: SpeculationStats | None = None  # set when this generation may speculate (`edge_service.speculation`)
    # the draft's cache: of the back blocks, fed the front's outputs (self-speculation), or of a draft model
    draft: State | None = None
    # what the draft has not run yet: front outputs (n, hidden), or token ids (n,) for a draft model
    draft_lag: list[torch.Tensor] = field(default_factory=list)
    rollback: bool = False  # the cloud holds rejected drafts: the next frame cuts them (Flags.ROLLBACK)


class Orchestrator:
    """Runs generations under a plan; the plan a generation starts with is the one it finishes with."""

    def __init__(self, loaded: LoadedModel, plan: Plan, cloud: CloudLink | None,
                 link_observer: Callable[[int, float, float], None] | None = None, slowdown: float = 1.0,
                 fallback: bool = False, step_timeout_s: float | None = None,
                 breaker: CloudBreaker | None = None, max_concurrent_steps: int | None = None,
                 runners: Runners | None = None, speculate: int | str = 0, draft: DraftModel | None = None,
                 speculate_max_streams: int | None = None) -> None:
        assert loaded.tokenizer is not None, "the edge owns the tokenizer"
        assert slowdown >= 1.0, "the emulated slowdown stretches compute; it cannot speed it up"
        self.tokenizer = loaded.tokenizer
        self.loaded = loaded
        self.model = loaded.layered
        self.runners = runners or Runners(self.model)  # torch or onnxruntime, as each plan's edge_backend says
        self.cloud = cloud
        self.link_observer = link_observer  # (bytes both ways, elapsed ms, cloud compute ms) per exchange
        self.slowdown = slowdown  # emulate a slower device: sleep (slowdown - 1) x each stretch of edge compute
        self._device_lock = threading.Lock()  # the emulated device's one core (used only when slowdown > 1)
        # Generations computing at once (None: no bound); beyond about one per core they only thrash the cores.
        self._steps = step_bound(max_concurrent_steps)
        self.fallback = fallback  # finish on the edge alone when the cloud fails (the edge holds every block)
        self.step_timeout_s = step_timeout_s  # a decode step slower than this counts as a stalled cloud
        self.breaker = breaker or CloudBreaker()
        self.eos_ids = _eos_ids(loaded)
        # Drafts per round: a fixed depth (0: none), or "auto" (`DepthTuner`: what the measured rounds favour)
        self.speculate: int | str = 0
        self.tuner: DepthTuner | None = None
        self.set_speculation(speculate)
        self.draft = draft  # a draft model; None: the edge's own blocks draft (the cloud's middle skipped)
        # `auto` drafts only while at most this many generations run here (None: always): drafting trades the
        # edge's compute for round trips, and a busy edge has no compute to spare (as vLLM's
        # speculative_disable_by_batch_size)
        self.speculate_max_streams = speculate_max_streams
        self._running = 0  # generations running now
        self._running_lock = threading.Lock()
        self.plan = plan
        self.set_plan(plan)

    @property
    def speculation(self) -> str:
        """The speculation setting as `--speculate` spells it: off, auto or a depth."""
        return "off" if self.speculate == 0 else str(self.speculate)

    def set_speculation(self, setting: int | str) -> None:
        """Speculate as `setting` says (off, auto or a depth; 0 is off) from the next generation on."""
        self.speculate = "auto" if setting == "auto" else 0 if setting == "off" else int(setting)
        self.tuner = (self.tuner or DepthTuner()) if setting == "auto" else None

    def speculation_snapshot(self) -> dict:
        """The speculation setting, what drafts, and what `auto` has measured (None unless auto)."""
        return {"setting": self.speculation, "draft": self.draft.loaded.name if self.draft is not None else "self",
                "can_draft": can_draft(self.plan), "auto": self.tuner.snapshot() if self.tuner is not None else None,
                "max_streams": self.speculate_max_streams, "running": self._running}

    def _spare_compute(self) -> bool:
        """Whether few enough generations run here for `auto` to draft (`speculate_max_streams`)."""
        return self.speculate_max_streams is None or self._running <= self.speculate_max_streams

    def expect_depth(self, depth: int) -> None:
        """The planner's predicted best depth for the current plan: `auto` starts (and explores) from it."""
        if self.tuner is not None and depth > 0:
            self.tuner.first_depth = min(depth, self.tuner.max_depth)

    def set_plan(self, plan: Plan) -> None:
        """Make `plan` the one new generations start with; generations already running keep theirs."""
        assert plan.num_layers == self.model.num_layers, "plan and model disagree on the number of blocks"
        assert self.cloud is not None or not plan.uses_cloud, "a plan that uses the cloud needs a cloud link"
        self._prepare(plan)
        if self.tuner is not None and plan != self.plan:  # another cut: other draft and round times, relearnt
            self.tuner = DepthTuner(first_depth=self.tuner.first_depth)
        self.plan = plan  # one reference swap: each generation reads it once, in `_context`

    def _prepare(self, plan: Plan) -> None:
        """Build the plan's edge ranges now (an ONNX export can take seconds), so no request waits for them.

        Raises:
            UnsupportedModelError: the plan's edge runtime cannot run these blocks.
        """
        runner = self.runners.get(plan.edge_backend)
        if not plan.uses_cloud:
            runner.prepare(LayerRange(start=0, end=plan.num_layers), embed=True)
            return
        if plan.cut_a > 0:
            runner.prepare(plan.edge_front, embed=True)
        if len(plan.edge_back) or plan.head == "edge":
            runner.prepare(plan.edge_back, embed=False)

    def generate(self, request: GenerationRequest, cancel: threading.Event | None = None
                 ) -> Generator[Piece | Finished, None, None]:
        """Yield text pieces as they become final, then one `Finished`.

        Raises:
            CloudUnavailableError, EdgesplitError: the cloud failed or refused a step.
        """
        started = time.perf_counter()
        ctx = self._context(request)
        text = TextStream(self.tokenizer, list(request.stop))
        tokens: list[int] = []
        reason: FinishReason = "length"
        first_token_ms = 0.0
        gaps: list[float] = []
        ends = set(request.stop_token_ids) | (set() if request.ignore_eos else self.eos_ids)
        told = 0  # log-probabilities already sent with a piece
        with self._running_lock:
            self._running += 1
        try:
            pending = self._advance(ctx, torch.tensor(request.prompt_ids), request.prompt_ids)
            last = time.perf_counter()
            first_token_ms = (last - started) * 1000
            while True:
                token = pending.pop(0)
                if tokens:
                    now = time.perf_counter()
                    gaps.append((now - last) * 1000)
                    last = now
                tokens.append(token)
                if token in ends:
                    reason = "stop"
                    break
                if piece := text.push(token):
                    yield Piece(piece, len(tokens), tuple(ctx.logprobs[told:]))
                    told = len(ctx.logprobs)
                if text.stopped:
                    reason = "stop"
                    break
                if len(tokens) >= request.max_tokens:
                    break
                if cancel is not None and cancel.is_set():
                    reason = "cancelled"
                    break
                if not pending:
                    pending = self._advance(ctx, torch.tensor([token]), [*request.prompt_ids, *tokens],
                                            self._depth(ctx, request.max_tokens - len(tokens)))
            if piece := text.flush():
                yield Piece(piece, len(tokens), tuple(ctx.logprobs[told:]))
        finally:
            with self._running_lock:
                self._running -= 1
            if ctx.opened:
                self.cloud.end_session(ctx.session)  # type: ignore[union-attr]
        yield Finished(reason, len(request.prompt_ids), tokens, ctx.plan, ctx.link, first_token_ms,
                       (time.perf_counter() - started) * 1000, gaps, ctx.fallback, ctx.replays, ctx.logprobs,
                       ctx.spec)

    def _depth(self, ctx: _Context, room: int) -> int:
        """Drafts for the next round: none unless this generation speculates, and never more than the tokens it
        may still produce after the round's own one."""
        if ctx.draft is None:  # not speculating, or on a plan that cannot (`_drafts`; fallback is edge-only)
            return 0
        if self.tuner is not None and not self._spare_compute():
            return 0
        wanted = self.tuner.depth() if self.tuner is not None else int(self.speculate)
        return max(0, min(wanted, room - 1))

    def _advance(self, ctx: _Context, ids: torch.Tensor, prefix: list[int], depth: int = 0) -> list[int]:
        """One step (or, with `depth` > 0, one speculative round from the latest token) that survives the cloud:
        `prefix` is every token id so far, `ids` included; the next tokens.

        A session the cloud lost (it restarted, or dropped the session) is rebuilt by replaying the prefix on the
        same plan. A cloud that fails, stalls or refuses, when fallback is allowed, is left for good: the prefix
        is replayed through every block on the edge and the generation finishes there; the breaker keeps new
        generations off the cloud for a while.
        """
        for _ in range(3):  # at most: a replay, then a fallback
            try:
                started, exchanges = time.perf_counter(), ctx.link.decode_steps
                tokens = (speculate(self, ctx, int(ids[-1]), depth) if depth
                          else [self._step(ctx, ids, len(prefix))])
                if not depth and self.tuner is not None and ctx.draft is not None and len(ids) == 1 \
                        and self._spare_compute():  # a busy edge's plain steps would flatter drafting later
                    self.tuner.observe_plain((time.perf_counter() - started) * 1000)
                if ctx.plan.uses_cloud:
                    self.breaker.succeeded()
                if ctx.link.decode_steps > exchanges:
                    ctx.link.decode_tokens += len(tokens)
                return tokens
            except (CloudSessionLostError, SessionNotFoundError) as exc:
                if ctx.replays:  # lost again straight after a replay: treat as a failing cloud
                    self._fall_back(ctx, exc)
                else:
                    log.warning("cloud lost session %s (%s); replaying %d tokens", short_id(ctx.session), exc,
                                len(prefix))
                    self._restart(ctx, ctx.plan)
                    ctx.replays += 1
            except (CloudUnavailableError, CapacityError) as exc:
                self._fall_back(ctx, exc)
            ids, depth = torch.tensor(prefix), 0  # the accepted prefix only: a round's drafts are gone with it
        raise CloudUnavailableError("the cloud failed again after a replay and a fallback")  # not reached

    def _fall_back(self, ctx: _Context, exc: EdgesplitError) -> None:
        if not self.fallback or not ctx.plan.uses_cloud:
            raise exc
        wait = self.breaker.failed()
        log.warning("cloud failed mid-generation (%s); finishing on the edge, cloud skipped for %.0f s", exc, wait)
        ctx.fallback = str(exc)
        self._restart(ctx, _edge_only(ctx.plan))

    def _restart(self, ctx: _Context, plan: Plan) -> None:
        """Fresh caches and a new cloud session at position 0, on `plan`.

        The old cloud session is not ended here: the cloud may be the thing that failed, and waiting on it would
        stall the recovery; its TTL frees it.
        """
        ctx.plan, ctx.session, ctx.position, ctx.opened, ctx.rollback = plan, uuid.uuid4(), 0, False, False
        ctx.runner = self.runners.get(plan.edge_backend)
        ctx.front, ctx.back = ctx.runner.new_state(), ctx.runner.new_state()
        ctx.draft = self._draft_state(ctx.runner) if ctx.draft is not None and can_draft(plan) else None
        ctx.draft_lag.clear()

    def _context(self, request: GenerationRequest) -> _Context:
        plan = self.plan  # one read: a plan swapped mid-generation does not affect this one
        fallback = None
        if plan.uses_cloud and self.fallback and self.breaker.open:
            plan, fallback = _edge_only(plan), "the cloud failed recently; retrying it after a backoff"
        if request.logprobs is not None and plan.uses_cloud and plan.head == "cloud":
            raise UserError("logprobs: this edge's plan runs the head in the cloud, which answers with tokens only; "
                            "log-probabilities need a plan with the head on the edge", param="logprobs")
        sampling = request.sampling
        if request.min_tokens:
            suppress = tuple(sorted(self.eos_ids | set(request.stop_token_ids)))
            sampling = sampling.model_copy(update={"suppress_ids": suppress,
                                                   "suppress_before": len(request.prompt_ids) + request.min_tokens})
        expected = self.loaded.digests.part(plan.cloud_layers, embed=plan.cut_a == 0, head=plan.head == "cloud")
        meta = SessionMeta(sampling=sampling, codec=plan.codec, zstd_level=plan.zstd_level,
                           request_id=request.request_id, backend=plan.cloud_backend, weights_digest=expected)
        runner = self.runners.get(plan.edge_backend)
        sampler = Sampler(sampling)
        # A seeded sampled request is reproducible only at one depth (the drafts decide which random numbers are
        # drawn), and `auto` moves with the timings: such a request decodes plainly unless a depth is fixed.
        reproducible = sampling.seed is not None and not sampler.greedy and self.speculate == "auto"
        speculating = self.speculate != 0 and can_draft(plan) and not reproducible
        return _Context(plan=plan, session=uuid.uuid4(), runner=runner, front=runner.new_state(),
                        back=runner.new_state(),
                        codec=FrameCodec(DTYPE_BY_NAME[plan.codec], plan.zstd_level),
                        sampler=sampler, meta=meta.model_dump_json().encode(), fallback=fallback,
                        top_logprobs=request.logprobs, spec=SpeculationStats(0) if speculating else None,
                        draft=self._draft_state(runner) if speculating else None)

    def _draft_state(self, runner: Runner) -> State:
        """A fresh cache for the draft: of the draft model, or of the edge's back blocks on `runner`."""
        return (self.draft.runner if self.draft is not None else runner).new_state()

    @contextmanager
    def _device(self, runner: Runner) -> Iterator[None]:
        """A stretch of edge compute. On an emulated slower device it lasts `slowdown` x as long and holds the
        device: the generations running at once take turns, as they would on one small core. Torch steps of
        generations running at once are batched (`splitcore.batching`); other runtimes take turns on the cores."""
        if self.slowdown == 1.0:
            with contextlib.nullcontext() if runner.name == "torch" else self._steps:
                yield
            return
        with self._device_lock:
            started = time.perf_counter()
            yield
            time.sleep((time.perf_counter() - started) * (self.slowdown - 1))  # sleeping frees the real core

    @torch.inference_mode()
    def _step(self, ctx: _Context, ids: torch.Tensor, position: int) -> int:
        """Run one step (the prompt, or one token) through every tier; return the next token, which sits at
        sequence position `position`."""
        plan, runner = ctx.plan, ctx.runner
        if not plan.uses_cloud:  # a = b: the cloud's range is empty, the edge runs every block
            all_blocks = LayerRange(start=0, end=plan.num_layers)
            with self._device(runner):
                return self._pick(ctx, runner.run_head(ctx.front, all_blocks, input_ids=ids), position)
        if plan.cut_a > 0:
            with self._device(runner):
                payload = runner.run(ctx.front, plan.edge_front, input_ids=ids)[0]  # (seq, hidden)
            if ctx.draft is not None:  # the draft catches up on these before it next drafts
                ctx.draft_lag.append(payload if self.draft is None else ids.reshape(-1))
        else:
            payload = ids  # (seq,): the plan lets tokens leave the device
        answer = self._cross(ctx, payload)
        if plan.head == "cloud":
            return int(answer[0])
        with self._device(runner):
            return self._pick(ctx, runner.run_head(ctx.back, plan.edge_back, hidden=answer), position)

    @classmethod
    def _pick(cls, ctx: _Context, logits: torch.Tensor, position: int) -> int:
        """Sample the token at `position` from logits (1, vocab); record its log-probability when asked."""
        token = ctx.sampler(logits, position=position)
        if ctx.top_logprobs is not None:
            cls._record(ctx, logits, token)
        return token

    @staticmethod
    def _record(ctx: _Context, logits: torch.Tensor, token: int) -> None:
        """Record `token`'s log-probability under logits (1, vocab), and the top alternatives asked for."""
        assert ctx.top_logprobs is not None
        logprobs = torch.log_softmax(logits[0].float(), dim=-1)
        top = torch.topk(logprobs, ctx.top_logprobs) if ctx.top_logprobs else None
        alternatives = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else ()
        ctx.logprobs.append(TokenChoice(token, float(logprobs[token]), alternatives))

    def _cross(self, ctx: _Context, payload: torch.Tensor) -> torch.Tensor:
        """Send one step's activations to the cloud and return what it answers."""
        plan = ctx.plan
        flags = Flags.HEAD if plan.head == "cloud" else Flags.LAST_ROW if len(plan.edge_back) == 0 else Flags.NONE
        if ctx.rollback:
            flags |= Flags.ROLLBACK
            ctx.rollback = False
        first = ctx.position == 0
        frame = ctx.codec.encode(ctx.session, ctx.position, plan.cloud_layers, payload, flags,
                                 meta=ctx.meta if first else b"")
        sent = time.perf_counter()
        ctx.opened = True
        data = self.cloud.forward(frame, timeout_s=None if first else self.step_timeout_s,  # type: ignore[union-attr]
                                  session=ctx.session)
        elapsed_ms = (time.perf_counter() - sent) * 1000
        answer = ctx.codec.decode(data)
        expected = Kind.TOKENS if plan.head == "cloud" else Kind.HIDDEN
        if answer.session != ctx.session or answer.position != ctx.position or answer.kind != expected:
            raise CloudUnavailableError("the cloud answered with a frame for another step")
        ctx.position += payload.shape[0]
        if self.link_observer is not None and getattr(self.cloud, "connected_at", 0.0) < sent:  # no handshake in it
            self.link_observer(len(frame) + len(data), elapsed_ms, answer.compute_ms)
        link = ctx.link
        link.cloud_compute_ms += answer.compute_ms
        link.round_trip_ms += elapsed_ms
        if first:
            link.prefill_bytes_up += len(frame)
            link.prefill_bytes_down += len(data)
        else:
            link.decode_bytes_up += len(frame)
            link.decode_bytes_down += len(data)
            link.decode_steps += 1
        return answer.tensor


def _edge_only(plan: Plan) -> Plan:
    return Plan(num_layers=plan.num_layers, cut_a=plan.num_layers, cut_b=plan.num_layers,
                edge_backend=plan.edge_backend)


def _eos_ids(loaded: LoadedModel) -> set[int]:
    ids = loaded.layered.model.generation_config.eos_token_id
    if ids is None:
        ids = loaded.tokenizer.eos_token_id  # type: ignore[union-attr]
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, list) else {int(ids)}

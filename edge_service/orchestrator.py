"""One generation across the tiers: edge front blocks, cloud middle, edge back blocks and head.

Plain code, no HTTP: the API layer iterates `Orchestrator.generate` in a
worker thread; tests and benchmarks call it directly, with either the HTTP
`CloudClient` or the cloud's `ShardEngine` in process as the link.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from edge_service.textstream import TextStream
from splitcore.codec import DTYPE_BY_NAME
from splitcore.errors import CloudUnavailableError
from splitcore.loading import LoadedModel
from splitcore.plan import Plan
from splitcore.ranges import LayerRange
from splitcore.sampling import Sampler
from splitcore.schema import SamplingParams, SessionMeta
from splitcore.shard import ShardState, run_range
from splitcore.wire import Flags, FrameCodec, Kind

log = logging.getLogger(__name__)
FinishReason = Literal["stop", "length", "cancelled"]


class CloudLink(Protocol):
    """What the orchestrator needs of the cloud: one frame in, one frame out; and freeing a session."""

    def forward(self, frame: bytes) -> bytes: ...

    def end_session(self, session: uuid.UUID) -> None: ...


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams = SamplingParams(temperature=0.0)
    stop: tuple[str, ...] = ()
    request_id: str = ""


@dataclass
class LinkStats:
    """What one generation moved across the link and how long the cloud computed."""

    prefill_bytes_up: int = 0
    prefill_bytes_down: int = 0
    decode_bytes_up: int = 0
    decode_bytes_down: int = 0
    decode_steps: int = 0
    cloud_compute_ms: float = 0.0
    round_trip_ms: float = 0.0

    def as_dict(self) -> dict:
        per_up = self.decode_bytes_up / self.decode_steps if self.decode_steps else 0.0
        per_down = self.decode_bytes_down / self.decode_steps if self.decode_steps else 0.0
        return {**self.__dict__, "decode_bytes_up_per_token": round(per_up, 1),
                "decode_bytes_down_per_token": round(per_down, 1)}


@dataclass
class Finished:
    """The last event of a generation."""

    finish_reason: FinishReason
    prompt_tokens: int
    token_ids: list[int]
    plan: Plan
    link: LinkStats
    time_to_first_token_ms: float
    total_ms: float
    inter_token_ms: list[float] = field(default_factory=list)  # time between consecutive tokens after the first


@dataclass
class _Context:
    """Per-generation state on the edge: its caches, the cloud session, the counters."""

    plan: Plan
    session: uuid.UUID
    front: ShardState
    back: ShardState
    codec: FrameCodec
    sampler: Sampler
    meta: bytes
    position: int = 0
    opened: bool = False  # a frame was sent: the cloud may hold a session to end
    step_cloud_s: float = 0.0  # this step's time waiting on the cloud (not stretched by the slowdown)
    link: LinkStats = field(default_factory=LinkStats)


class Orchestrator:
    """Runs generations under a plan; the plan a generation starts with is the one it finishes with."""

    def __init__(self, loaded: LoadedModel, plan: Plan, cloud: CloudLink | None,
                 link_observer: Callable[[int, float, float], None] | None = None, slowdown: float = 1.0) -> None:
        assert loaded.tokenizer is not None, "the edge owns the tokenizer"
        assert slowdown >= 1.0, "the emulated slowdown stretches compute; it cannot speed it up"
        self.tokenizer = loaded.tokenizer
        self.loaded = loaded
        self.model = loaded.layered
        self.cloud = cloud
        self.link_observer = link_observer  # (bytes both ways, elapsed ms, cloud compute ms) per exchange
        self.slowdown = slowdown  # emulate a slower device: sleep (slowdown - 1) x each step's edge compute
        self.eos_ids = _eos_ids(loaded)
        self.plan = plan
        self.set_plan(plan)

    def set_plan(self, plan: Plan) -> None:
        """Make `plan` the one new generations start with; generations already running keep theirs."""
        assert plan.num_layers == self.model.num_layers, "plan and model disagree on the number of blocks"
        assert self.cloud is not None or not plan.uses_cloud, "a plan that uses the cloud needs a cloud link"
        self.plan = plan  # one reference swap: each generation reads it once, in `_context`

    def generate(self, request: GenerationRequest, cancel: threading.Event | None = None
                 ) -> Generator[str | Finished, None, None]:
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
        try:
            token = self._step(ctx, torch.tensor(request.prompt_ids))
            last = time.perf_counter()
            first_token_ms = (last - started) * 1000
            while True:
                tokens.append(token)
                if token in self.eos_ids:
                    reason = "stop"
                    break
                if piece := text.push(token):
                    yield piece
                if text.stopped:
                    reason = "stop"
                    break
                if len(tokens) >= request.max_tokens:
                    break
                if cancel is not None and cancel.is_set():
                    reason = "cancelled"
                    break
                token = self._step(ctx, torch.tensor([token]))
                now = time.perf_counter()
                gaps.append((now - last) * 1000)
                last = now
            if piece := text.flush():
                yield piece
        finally:
            if ctx.opened:
                self.cloud.end_session(ctx.session)  # type: ignore[union-attr]
        yield Finished(reason, len(request.prompt_ids), tokens, ctx.plan, ctx.link, first_token_ms,
                       (time.perf_counter() - started) * 1000, gaps)

    def _context(self, request: GenerationRequest) -> _Context:
        plan = self.plan  # one read: a plan swapped mid-generation does not affect this one
        meta = SessionMeta(sampling=request.sampling, codec=plan.codec, zstd_level=plan.zstd_level,
                           request_id=request.request_id)
        return _Context(plan=plan, session=uuid.uuid4(), front=ShardState(self.model.new_cache()),
                        back=ShardState(self.model.new_cache()),
                        codec=FrameCodec(DTYPE_BY_NAME[plan.codec], plan.zstd_level),
                        sampler=Sampler(request.sampling), meta=meta.model_dump_json().encode())

    def _step(self, ctx: _Context, ids: torch.Tensor) -> int:
        """Run one step (the prompt, or one token) through every tier; return the next token."""
        if self.slowdown == 1.0:
            return self._run_step(ctx, ids)
        started = time.perf_counter()
        token = self._run_step(ctx, ids)
        edge_s = time.perf_counter() - started - ctx.step_cloud_s
        time.sleep(max(0.0, edge_s) * (self.slowdown - 1))  # sleeping frees the core, as a slower device would
        return token

    @torch.inference_mode()
    def _run_step(self, ctx: _Context, ids: torch.Tensor) -> int:
        plan, model = ctx.plan, self.model
        ctx.step_cloud_s = 0.0
        if not plan.uses_cloud:  # a = b: the cloud's range is empty, the edge runs every block
            all_blocks = LayerRange(start=0, end=plan.num_layers)
            return ctx.sampler(model.logits(run_range(model, ctx.front, all_blocks, input_ids=ids)))
        if plan.cut_a > 0:
            payload = run_range(model, ctx.front, plan.edge_front, input_ids=ids)[0]  # (seq, hidden)
        else:
            payload = ids  # (seq,): the plan lets tokens leave the device
        answer = self._cross(ctx, payload)
        if plan.head == "cloud":
            return int(answer[0])
        if len(plan.edge_back) == 0:
            return ctx.sampler(model.logits(answer.unsqueeze(0)))
        hidden = run_range(model, ctx.back, plan.edge_back, hidden=answer)
        return ctx.sampler(model.logits(hidden))

    def _cross(self, ctx: _Context, payload: torch.Tensor) -> torch.Tensor:
        """Send one step's activations to the cloud and return what it answers."""
        plan = ctx.plan
        flags = Flags.HEAD if plan.head == "cloud" else Flags.LAST_ROW if len(plan.edge_back) == 0 else Flags.NONE
        first = ctx.position == 0
        frame = ctx.codec.encode(ctx.session, ctx.position, plan.cloud_layers, payload, flags,
                                 meta=ctx.meta if first else b"")
        sent = time.perf_counter()
        ctx.opened = True
        data = self.cloud.forward(frame)  # type: ignore[union-attr]
        elapsed_ms = (time.perf_counter() - sent) * 1000
        ctx.step_cloud_s = elapsed_ms / 1000
        answer = ctx.codec.decode(data)
        expected = Kind.TOKENS if plan.head == "cloud" else Kind.HIDDEN
        if answer.session != ctx.session or answer.position != ctx.position or answer.kind != expected:
            raise CloudUnavailableError("the cloud answered with a frame for another step")
        ctx.position += payload.shape[0]
        if self.link_observer is not None:
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


def _eos_ids(loaded: LoadedModel) -> set[int]:
    ids = loaded.layered.model.generation_config.eos_token_id
    if ids is None:
        ids = loaded.tokenizer.eos_token_id  # type: ignore[union-attr]
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, list) else {int(ids)}

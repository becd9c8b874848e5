"""Running a generation for the API: OpenAI-shaped bodies and server-sent event streams."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, Literal

import anyio
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool

from edge_service.metrics import EdgeMetrics
from edge_service.orchestrator import Finished, GenerationRequest, Orchestrator
from edge_service.protocol import (
    AssistantMessage,
    ChatCompletionChoice,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    CompletionChoice,
    CompletionResponse,
    CompletionStreamResponse,
    DeltaMessage,
    EdgesplitInfo,
    FinishReason,
    LinkUsage,
    Usage,
)
from splitcore.errors import EdgesplitError
from splitcore.http import error_body

log = logging.getLogger(__name__)
Endpoint = Literal["completion", "chat"]
DISCONNECT_POLL_S = 0.25  # how often a whole-body request checks that its caller is still there


def _usage(done: Finished) -> Usage:
    n = len(done.token_ids)
    return Usage(prompt_tokens=done.prompt_tokens, completion_tokens=n, total_tokens=done.prompt_tokens + n)


def _extension(done: Finished) -> EdgesplitInfo:
    """edgesplit's own figures for one request: the plan it ran on and what crossed the link."""
    plan = done.plan
    return EdgesplitInfo(plan=plan.describe(), cut=[plan.cut_a, plan.cut_b], head=plan.head, codec=plan.codec,
                         time_to_first_token_ms=round(done.time_to_first_token_ms, 2), total_ms=round(done.total_ms, 2),
                         link=LinkUsage(**done.link.as_dict()), fallback=done.fallback, replays=done.replays)


def _finish(done: Finished) -> FinishReason:
    return "stop" if done.finish_reason == "cancelled" else done.finish_reason


class Responder:
    """Builds the body or the event stream of one request, as the protocol's models."""

    def __init__(self, orchestrator: Orchestrator, model_name: str, endpoint: Endpoint,
                 metrics: EdgeMetrics | None = None) -> None:
        self.orchestrator = orchestrator
        self.metrics = metrics or EdgeMetrics()
        self.model_name = model_name
        self.endpoint = endpoint
        prefix = "cmpl" if endpoint == "completion" else "chatcmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _whole(self, text: str, done: Finished) -> CompletionResponse | ChatCompletionResponse:
        envelope: dict[str, Any] = {"id": self.id, "created": self.created, "model": self.model_name,
                                    "usage": _usage(done), "edgesplit": _extension(done)}
        if self.endpoint == "completion":
            return CompletionResponse(choices=[CompletionChoice(text=text, finish_reason=_finish(done))], **envelope)
        choice = ChatCompletionChoice(message=AssistantMessage(content=text), finish_reason=_finish(done))
        return ChatCompletionResponse(choices=[choice], **envelope)

    def _chunk(self, text: str | None, finish: FinishReason | None = None, first: bool = False,
               done: Finished | None = None) -> str:
        """One event: a piece of text, the finish (text ""), or with `done` the usage tail (no choices)."""
        envelope: dict[str, Any] = {"id": self.id, "created": self.created, "model": self.model_name}
        if done is not None:
            envelope |= {"usage": _usage(done), "edgesplit": _extension(done)}
        chunk: CompletionStreamResponse | ChatCompletionStreamResponse
        if self.endpoint == "completion":
            choices = [] if text is None else [CompletionChoice(text=text, finish_reason=finish)]
            chunk = CompletionStreamResponse(choices=choices, **envelope)
        else:
            delta = DeltaMessage(role="assistant", content=text) if first else DeltaMessage(content=text or None)
            stream_choices = [] if text is None else [ChatCompletionStreamChoice(delta=delta, finish_reason=finish)]
            chunk = ChatCompletionStreamResponse(choices=stream_choices, **envelope)
        return _sse(chunk.model_dump())

    async def body(self, request: GenerationRequest, disconnected: Callable[[], Awaitable[bool]]
                   ) -> CompletionResponse | ChatCompletionResponse:
        """The whole generation as one response body; a caller who hangs up cancels it, as a stream's does.

        `disconnected` is polled while the generation runs (Starlette's `Request.is_disconnected`); once it says
        so, the generation stops at its next step and frees the cloud session, so an abandoned request does not
        keep its slot for the rest of its tokens.
        """
        cancel = threading.Event()
        self.metrics.begin()
        try:
            work = asyncio.ensure_future(run_in_threadpool(lambda: list(self.orchestrator.generate(request, cancel))))
            while not (await asyncio.wait({work}, timeout=DISCONNECT_POLL_S))[0]:
                if await disconnected():
                    cancel.set()
            events = await work
        except BaseException as exc:
            cancel.set()  # cancelled from outside (shutdown): stop the generation too
            self.metrics.failed(exc, self.endpoint)
            raise
        finally:
            self.metrics.end()
        done = events[-1]
        assert isinstance(done, Finished)
        if cancel.is_set():
            self.metrics.disconnected(self.endpoint)
            log.info("request %s: the caller hung up; stopped after %d tokens", self.id, len(done.token_ids))
        else:
            self.metrics.finished(done, self.endpoint)
        return self._whole("".join(e for e in events if isinstance(e, str)), done)

    async def stream(self, request: GenerationRequest, include_usage: bool) -> AsyncIterator[str]:
        """Start the generation, then stream it as server-sent events.

        The prompt is processed before this returns, so a failure there (cloud down, refused frame) is an ordinary
        error response with its status rather than an error inside a 200 stream.
        """
        cancel = threading.Event()
        events = self.orchestrator.generate(request, cancel)
        self.metrics.begin()
        try:
            head = await run_in_threadpool(next, events)
        except BaseException as exc:
            self.metrics.end()
            self.metrics.failed(exc, self.endpoint)
            await run_in_threadpool(events.close)
            raise
        return self._events(head, events, cancel, include_usage)

    async def _events(self, head: str | Finished, events: Generator[str | Finished, None, None],
                      cancel: threading.Event, include_usage: bool) -> AsyncIterator[str]:
        """One chunk per text piece, a finishing chunk, usage if asked, then `[DONE]`.

        A client that hangs up cancels this generator; the generation stops at its next step and frees the
        cloud session.
        """
        first = True
        ended = False
        try:
            if self.endpoint == "chat":
                yield self._chunk("", first=True)
                first = False
            async for event in _chain(head, iterate_in_threadpool(events)):
                if isinstance(event, Finished):
                    ended = True
                    self.metrics.finished(event, self.endpoint)
                    yield self._chunk("", _finish(event))
                    if include_usage:
                        yield self._chunk(None, done=event)
                else:
                    yield self._chunk(event, first=first)
                    first = False
            yield "data: [DONE]\n\n"
        except EdgesplitError as exc:  # headers are sent: the error goes in the stream, as OpenAI does
            ended = True
            self.metrics.failed(exc, self.endpoint)
            log.warning("request %s failed mid-stream: %s", self.id, exc)
            yield _sse(error_body(str(exc), exc.error_type, code=exc.status_code))
        finally:
            self.metrics.end()
            if not ended:  # the client hung up before the end
                self.metrics.disconnected(self.endpoint)
            cancel.set()
            with anyio.CancelScope(shield=True):  # a hung-up client cancels us; the cloud session must still end
                await run_in_threadpool(events.close)


async def _chain(head: str | Finished, rest: AsyncIterator[str | Finished]) -> AsyncIterator[str | Finished]:
    yield head
    async for event in rest:
        yield event


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def make_request_id() -> str:
    return uuid.uuid4().hex[:16]



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

from edge_service.generation import Piece, TokenChoice
from edge_service.metrics import EdgeMetrics
from edge_service.orchestrator import Finished, GenerationRequest, Orchestrator
from edge_service.protocol import (
    AssistantMessage,
    ChatCompletionChoice,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    CompletionStreamResponse,
    DeltaMessage,
    EdgesplitInfo,
    FinishReason,
    LinkUsage,
    SpeculationUsage,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from splitcore.errors import EdgesplitError
from splitcore.http import error_body

log = logging.getLogger(__name__)
Endpoint = Literal["completion", "chat"]
DISCONNECT_POLL_S = 0.25  # how often a whole-body request checks that its caller is still there


def _usage(done: Finished) -> Usage:
    return _usage_of(done.prompt_tokens, len(done.token_ids))


def _usage_of(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _extension(done: Finished) -> EdgesplitInfo:
    """edgesplit's own figures for one request: the plan it ran on and what crossed the link."""
    plan = done.plan
    return EdgesplitInfo(plan=plan.describe(), cut=[plan.cut_a, plan.cut_b], head=plan.head, codec=plan.codec,
                         time_to_first_token_ms=round(done.time_to_first_token_ms, 2), total_ms=round(done.total_ms, 2),
                         link=LinkUsage(**done.link.as_dict()), fallback=done.fallback, replays=done.replays,
                         speculation=SpeculationUsage(**done.speculation.as_dict()) if done.speculation else None)


def _finish(done: Finished) -> FinishReason:
    return "stop" if done.finish_reason == "cancelled" else done.finish_reason


class Responder:
    """Builds the body or the event stream of one request, as the protocol's models."""

    def __init__(self, orchestrator: Orchestrator, model_name: str, endpoint: Endpoint,
                 metrics: EdgeMetrics | None = None, echo: str = "", continuous_usage: bool = False) -> None:
        self.orchestrator = orchestrator
        self.echo = echo  # the prompt's text, sent before the generated text (completions' `echo`)
        self.continuous_usage = continuous_usage  # usage in every stream chunk (vLLM's continuous_usage_stats)
        self._offset = 0  # characters of completion text so far: the legacy logprobs' text_offset
        self._first_seen = False  # the generation has produced its first event (waiting -> running)
        self.metrics = metrics or EdgeMetrics()
        self.model_name = model_name
        self.endpoint = endpoint
        prefix = "cmpl" if endpoint == "completion" else "chatcmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _token_text(self, token_id: int) -> str:
        return str(self.orchestrator.tokenizer.decode([token_id]))

    def _completion_logprobs(self, choices: list[TokenChoice] | tuple[TokenChoice, ...] | None, text: str
                             ) -> CompletionLogprobs | None:
        """The legacy shape for the tokens behind `text`; offsets count from the start of the completion."""
        if choices is None:
            return None
        tokens = [self._token_text(c.token_id) for c in choices]
        offsets = []
        for token in tokens:
            offsets.append(self._offset)
            self._offset += len(token)
        return CompletionLogprobs(tokens=tokens, token_logprobs=[c.logprob for c in choices],
                                  top_logprobs=[{self._token_text(t): lp for t, lp in c.top} for c in choices],
                                  text_offset=offsets)

    def _chat_logprobs(self, choices: list[TokenChoice] | tuple[TokenChoice, ...] | None) -> ChatLogprobs | None:
        if choices is None:
            return None

        def top(token_id: int, logprob: float) -> TopLogprob:
            text = self._token_text(token_id)
            return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

        return ChatLogprobs(content=[TokenLogprob(**top(c.token_id, c.logprob).model_dump(),
                                                  top_logprobs=[top(t, lp) for t, lp in c.top]) for c in choices])

    def _whole(self, text: str, done: Finished, logprobs: bool) -> CompletionResponse | ChatCompletionResponse:
        envelope: dict[str, Any] = {"id": self.id, "created": self.created, "model": self.model_name,
                                    "usage": _usage(done), "edgesplit": _extension(done)}
        choices = done.logprobs if logprobs else None
        if self.endpoint == "completion":
            choice = CompletionChoice(text=self.echo + text, finish_reason=_finish(done),
                                      logprobs=self._completion_logprobs(choices, text))
            return CompletionResponse(choices=[choice], **envelope)
        chat = ChatCompletionChoice(message=AssistantMessage(content=text), finish_reason=_finish(done),
                                    logprobs=self._chat_logprobs(choices))
        return ChatCompletionResponse(choices=[chat], **envelope)

    def _chunk(self, text: str | None, finish: FinishReason | None = None, first: bool = False,
               done: Finished | None = None, logprobs: tuple[TokenChoice, ...] | None = None,
               usage: Usage | None = None) -> str:
        """One event: a piece of text, the finish (text ""), or with `done` the usage tail (no choices)."""
        envelope: dict[str, Any] = {"id": self.id, "created": self.created, "model": self.model_name,
                                    "usage": usage}
        if done is not None:
            envelope |= {"usage": _usage(done), "edgesplit": _extension(done)}
        chunk: CompletionStreamResponse | ChatCompletionStreamResponse
        if self.endpoint == "completion":
            choices = [] if text is None else [
                CompletionChoice(text=text, finish_reason=finish,
                                 logprobs=self._completion_logprobs(logprobs, text or ""))]
            chunk = CompletionStreamResponse(choices=choices, **envelope)
        else:
            delta = DeltaMessage(role="assistant", content=text) if first else DeltaMessage(content=text or None)
            stream_choices = [] if text is None else [
                ChatCompletionStreamChoice(delta=delta, finish_reason=finish, logprobs=self._chat_logprobs(logprobs))]
            chunk = ChatCompletionStreamResponse(choices=stream_choices, **envelope)
        return _sse(chunk.model_dump())

    def _first(self) -> None:
        """The generation's first event is out: it moves from waiting to running (metrics)."""
        if not self._first_seen:
            self._first_seen = True
            self.metrics.first_token()

    def _marking_first(self, events: Generator[Piece | Finished, None, None]
                       ) -> Generator[Piece | Finished, None, None]:
        for event in events:
            self._first()
            yield event

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
            work = asyncio.ensure_future(run_in_threadpool(
                lambda: list(self._marking_first(self.orchestrator.generate(request, cancel)))))
            while not (await asyncio.wait({work}, timeout=DISCONNECT_POLL_S))[0]:
                if await disconnected():
                    cancel.set()
            events = await work
        except BaseException as exc:
            cancel.set()  # cancelled from outside (shutdown): stop the generation too
            self.metrics.failed(exc, self.endpoint)
            raise
        finally:
            self.metrics.end(self._first_seen)
        done = events[-1]
        assert isinstance(done, Finished)
        if cancel.is_set():
            self.metrics.disconnected(self.endpoint)
            log.info("request %s: the caller hung up; stopped after %d tokens", self.id, len(done.token_ids))
        else:
            self.metrics.finished(done, self.endpoint)
        return self._whole("".join(e for e in events if isinstance(e, str)), done, request.logprobs is not None)

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
            self._first()
        except BaseException as exc:
            self.metrics.end(self._first_seen)
            self.metrics.failed(exc, self.endpoint)
            await run_in_threadpool(events.close)
            raise
        return self._events(head, events, cancel, include_usage, request)

    async def _events(self, head: Piece | Finished, events: Generator[Piece | Finished, None, None],
                      cancel: threading.Event, include_usage: bool, request: GenerationRequest
                      ) -> AsyncIterator[str]:
        """One chunk per text piece, a finishing chunk, usage if asked, then `[DONE]`.

        A client that hangs up cancels this generator; the generation stops at its next step and frees the
        cloud session.
        """
        first = True
        ended = False
        prompt = len(request.prompt_ids)
        told = 0  # tokens whose log-probabilities went out with a piece
        asked = request.logprobs is not None

        def usage(tokens: int) -> Usage | None:
            return _usage_of(prompt, tokens) if self.continuous_usage else None

        try:
            if self.endpoint == "chat":
                yield self._chunk("", first=True, usage=usage(0))
                first = False
            elif self.echo:
                yield self._chunk(self.echo, usage=usage(0))
            async for event in _chain(head, iterate_in_threadpool(events)):
                if isinstance(event, Finished):
                    ended = True
                    self.metrics.finished(event, self.endpoint)
                    rest = tuple(event.logprobs[told:]) if asked else None  # tokens no piece carried (EOS)
                    yield self._chunk("", _finish(event), logprobs=rest, usage=usage(len(event.token_ids)))
                    if include_usage:
                        yield self._chunk(None, done=event)
                else:
                    told += len(event.logprobs)
                    yield self._chunk(event, first=first, logprobs=event.logprobs if asked else None,
                                      usage=usage(event.tokens))
                    first = False
            yield "data: [DONE]\n\n"
        except EdgesplitError as exc:  # headers are sent: the error goes in the stream, as OpenAI does
            ended = True
            self.metrics.failed(exc, self.endpoint)
            log.warning("request %s failed mid-stream: %s", self.id, exc)
            yield _sse(error_body(str(exc), exc.error_type, code=exc.status_code))
        finally:
            self.metrics.end(self._first_seen)
            if not ended:  # the client hung up before the end
                self.metrics.disconnected(self.endpoint)
            cancel.set()
            with anyio.CancelScope(shield=True):  # a hung-up client cancels us; the cloud session must still end
                await run_in_threadpool(events.close)


async def _chain(head: Piece | Finished, rest: AsyncIterator[Piece | Finished]
                 ) -> AsyncIterator[Piece | Finished]:
    yield head
    async for event in rest:
        yield event


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"



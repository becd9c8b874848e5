"""The OpenAI-compatible API's contract: every request and response type of the edge, in one module.

As vLLM's `entrypoints/openai/protocol.py`: requests (`CompletionRequest`, `ChatCompletionRequest`), whole
responses (`CompletionResponse`, `ChatCompletionResponse`), stream chunks (`CompletionStreamResponse`,
`ChatCompletionStreamResponse`), `ModelList`, `Usage`, and edgesplit's own figures per request (`EdgesplitInfo`).
The responder fills these models, so the OpenAPI schema shows what each endpoint answers. Errors use the shared
`splitcore.schema.ErrorResponse`.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from splitcore.errors import UserError
from splitcore.schema import SamplingParams, StrictModel

log = logging.getLogger(__name__)
MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's and vLLM's default limit


class _Request(BaseModel):
    """Base of the request bodies, lenient as vLLM's `OpenAIBaseModel` is, so SDKs and benchmarks work unchanged.

    - `null` means the field's default (SDKs send `"temperature": null` for "not set"; `"max_tokens": null` on a
      completion is its default of 16, not the whole context).
    - A field edgesplit does not know is ignored and its name logged (vLLM ignores and warns too); a known field
      it cannot honour is refused with 400, naming it in `param` (`check_supported`).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    @model_validator(mode="wrap")
    @classmethod
    def _lenient(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        if isinstance(data, dict):
            fields = cls.model_fields
            data = {k: v for k, v in data.items()
                    if v is not None or k not in fields or fields[k].is_required() or fields[k].default is None}
            ignored = sorted(k for k in data if k not in fields)
            if ignored:
                log.info("%s: ignored fields this edge does not use: %s", cls.__name__, ", ".join(ignored))
        return handler(data)


def _unsupported(param: str, message: str) -> UserError:
    return UserError(f"{param}: {message}", param=param)


class StreamOptions(_Request):
    include_usage: bool = False
    continuous_usage_stats: bool = Field(default=False, description="vLLM's extension: usage in every chunk")


class ResponseFormat(_Request):
    type: str = "text"


class _Common(_Request):
    """Fields both endpoints share, with vLLM's extensions `ignore_eos`, `min_tokens` and `stop_token_ids`."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None  # at most 4, as the OpenAI API
    stop_token_ids: Annotated[list[int], Field(max_length=64)] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    user: str | None = Field(default=None, max_length=256)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = Field(default=False, description="keep generating past the end-of-sequence token")
    min_tokens: int = Field(default=0, ge=0, description="tokens to generate before EOS or a stop token id may end")
    response_format: ResponseFormat | None = None

    def check_supported(self) -> None:
        """Refuse, naming the field, what this edge cannot honour (the defaults of each always pass).

        Raises:
            UserError: 400 with `param` set.
        """
        if self.n != 1:
            raise _unsupported("n", "only n = 1 is supported")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise _unsupported(name, "penalties are not supported; send 0 or leave it out")
        if self.logit_bias:
            raise _unsupported("logit_bias", "not supported; leave it out or send {}")
        if self.stream_options is not None and not self.stream:
            raise _unsupported("stream_options", "only allowed when stream is true")
        if self.response_format is not None and self.response_format.type != "text":
            raise _unsupported("response_format", f"only type 'text' is supported, not {self.response_format.type!r}")
        limit = self.output_limit
        if limit is not None and self.min_tokens > limit:
            raise _unsupported("min_tokens", f"min_tokens ({self.min_tokens}) is over max_tokens ({limit})")

    @property
    def output_limit(self) -> int | None:
        return self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats

    @property
    def top_logprobs_asked(self) -> int | None:
        """Alternatives per token to return with log-probabilities; None: no log-probabilities."""
        return None


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # the OpenAI default for completions; null means it too
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[int] | list[str]) -> str | list[int] | list[str]:
        if isinstance(v, list) and v and isinstance(v[0], str) and len(v) != 1:
            raise ValueError("only one prompt per request is supported")
        if isinstance(v, list) and not v:
            raise ValueError("prompt is empty")
        return v

    def check_supported(self) -> None:
        super().check_supported()
        if self.best_of not in (None, 1):
            raise _unsupported("best_of", "only best_of = 1 is supported")
        if self.suffix:
            raise _unsupported("suffix", "insertion (a suffix) is not supported")
        if self.echo and self.logprobs is not None:
            raise _unsupported("echo", "echo with logprobs needs the prompt's log-probabilities, which this edge "
                                       "does not compute; ask for one of them")

    @property
    def top_logprobs_asked(self) -> int | None:
        return self.logprobs


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None

    @model_validator(mode="after")
    def _content_parts(self) -> ChatCompletionRequest:
        for message in self.messages:
            _ = message.text  # validates content parts
        return self

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise _unsupported("top_logprobs", "needs logprobs: true")
        if self.tool_choice not in (None, "none", "auto") or (self.tools and self.tool_choice != "none"):
            raise _unsupported("tools" if self.tools else "tool_choice",
                               "tool calls are not supported; leave tools out or send tool_choice 'none'")

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def top_logprobs_asked(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class Usage(StrictModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Response(StrictModel):
    """A response body; the fields named in `omit_when_none` are left out rather than sent as null (the usage and
    edgesplit figures appear only in a stream's last chunk; an empty chat delta is `{}`)."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in self.omit_when_none}


class LinkUsage(StrictModel):
    """What one generation moved across the link, and the cloud's compute and round-trip time."""

    prefill_bytes_up: int
    prefill_bytes_down: int
    decode_bytes_up: int
    decode_bytes_down: int
    decode_steps: int = Field(description="exchanges with the cloud after the prompt's")
    decode_tokens: int = Field(description="tokens those exchanges gave: more than one each when speculating")
    cloud_compute_ms: float
    round_trip_ms: float
    decode_bytes_up_per_token: float
    decode_bytes_down_per_token: float


class SpeculationUsage(StrictModel):
    """The edge drafted, the cloud verified: how deep, how much was drafted and kept, in how many round trips."""

    depth: int = Field(description="drafts in the deepest round")
    drafted: int
    accepted: int
    round_trips: int = Field(description="verify rounds (each one exchange with the cloud)")


class EdgesplitInfo(StrictModel):
    """edgesplit's own figures for one request: the plan it ran on, its timing and what crossed the link."""

    plan: str = Field(description="the plan, as a person reads it")
    cut: list[int] = Field(min_length=2, max_length=2, description="cut points [a, b)")
    head: Literal["edge", "cloud"]
    codec: str
    time_to_first_token_ms: float
    total_ms: float
    link: LinkUsage
    fallback: str | None = Field(description="why the edge finished alone, when it did")
    replays: int = Field(description="times a lost cloud session was rebuilt by replaying the prefix")
    speculation: SpeculationUsage | None = Field(default=None,
        description="what drafting did; absent when the generation could not draft (speculation off, or a plan "
                    "without the edge's front and back blocks)")


FinishReason = Literal["stop", "length"]


class CompletionLogprobs(StrictModel):
    """The legacy completions shape: per token its text, log-probability, the top alternatives and its offset."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TopLogprob(StrictModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(StrictModel):
    content: list[TokenLogprob]


class CompletionChoice(_Response):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class _Envelope(_Response):
    """What every response and stream chunk of a generation starts with."""

    id: str
    object: str
    created: int = Field(description="unix time the request was received")
    model: str


class CompletionResponse(_Envelope):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage
    edgesplit: EdgesplitInfo


class CompletionStreamResponse(_Envelope):
    """One server-sent event of a streamed completion; the last (with `stream_options.include_usage`) carries
    `usage` and `edgesplit` and no choices; with `continuous_usage_stats` every chunk carries the usage so far."""

    omit_when_none = frozenset({"usage", "edgesplit"})
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None
    edgesplit: EdgesplitInfo | None = None


class AssistantMessage(StrictModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(_Response):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None


class ChatCompletionResponse(_Envelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatCompletionChoice]
    usage: Usage
    edgesplit: EdgesplitInfo


class DeltaMessage(_Response):
    """The new text of a chat stream chunk; the first names the role, a finishing one is empty."""

    omit_when_none = frozenset({"role", "content"})
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionStreamChoice(_Response):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None


class ChatCompletionStreamResponse(_Envelope):
    """One server-sent event of a streamed chat completion; the last, as for completions, carries the usage."""

    omit_when_none = frozenset({"usage", "edgesplit"})
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatCompletionStreamChoice]
    usage: Usage | None = None
    edgesplit: EdgesplitInfo | None = None


class ModelCard(StrictModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "edgesplit"


class ModelList(StrictModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

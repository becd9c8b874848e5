"""The OpenAI-compatible API's contract: every request and response type of the edge, in one module.

As vLLM's `entrypoints/openai/protocol.py`: requests (`CompletionRequest`, `ChatCompletionRequest`), whole
responses (`CompletionResponse`, `ChatCompletionResponse`), stream chunks (`CompletionStreamResponse`,
`ChatCompletionStreamResponse`), `ModelList`, `Usage`, and edgesplit's own figures per request (`EdgesplitInfo`).
The responder fills these models, so the OpenAPI schema shows what each endpoint answers. Errors use the shared
`splitcore.schema.ErrorResponse`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from splitcore.schema import SamplingParams, StrictModel


class StreamOptions(StrictModel):
    include_usage: bool = False


class _Common(StrictModel):
    """Fields both endpoints share. Unsupported OpenAI features are accepted only at their defaults."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None  # at most 4, as the OpenAI API
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    user: str | None = Field(default=None, max_length=256)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="after")
    def _supported(self) -> _Common:
        if self.n != 1:
            raise ValueError("n: only n = 1 is supported")
        if self.presence_penalty or self.frequency_penalty or self.logit_bias:
            raise ValueError("presence_penalty, frequency_penalty and logit_bias are not supported")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        return self

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


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # the OpenAI default for completions
    echo: bool = False
    logprobs: int | None = None
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

    @model_validator(mode="after")
    def _completion_supported(self) -> CompletionRequest:
        if self.echo or self.logprobs is not None or self.best_of not in (None, 1) or self.suffix:
            raise ValueError("echo, logprobs, best_of and suffix are not supported")
        return self


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict]
    name: str | None = None

    @property
    def text(self) -> str:
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

    @model_validator(mode="after")
    def _chat_supported(self) -> ChatCompletionRequest:
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        for message in self.messages:
            _ = message.text  # validates content parts
        return self

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


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
    decode_steps: int
    cloud_compute_ms: float
    round_trip_ms: float
    decode_bytes_up_per_token: float
    decode_bytes_down_per_token: float


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


FinishReason = Literal["stop", "length"]


class CompletionChoice(_Response):
    index: int = 0
    text: str
    logprobs: None = None
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
    `usage` and `edgesplit` and no choices."""

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
    logprobs: None = None
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
    logprobs: None = None
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

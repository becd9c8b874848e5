"""The contract carried inside a session's first frame (its `meta` JSON), on one strict, frozen base."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from splitcore.plan import BackendName, CodecName


class StrictModel(BaseModel):
    """Base of every wire and API type: unknown fields are refused, instances are immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorInfo(StrictModel):
    message: str
    type: str = Field(description="e.g. invalid_request_error, authentication_error, server_error")
    param: str | None = Field(default=None, description="the request field at fault, when one is")
    code: str | int | None = Field(default=None, description="the HTTP status")


class ErrorResponse(StrictModel):
    """The OpenAI error shape, used by both tiers so a client (or the edge reading the cloud) parses one format."""

    error: ErrorInfo


class SamplingParams(StrictModel):
    """How the tier that holds the head picks the next token."""

    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 means greedy")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    suppress_ids: tuple[int, ...] = Field(default=(), max_length=256,
                                          description="token ids the head must not pick at a position below "
                                                      "suppress_before (the request's min_tokens)")
    suppress_before: int = Field(default=0, ge=0)


class SessionMeta(StrictModel):
    """Sent with a session's first frame so the cloud can sample when it holds the head."""

    sampling: SamplingParams = SamplingParams()
    codec: CodecName = "fp16"  # element type of the cloud's hidden-state answers
    zstd_level: int = Field(default=1, ge=-7, le=22)  # zstd level of the cloud's answers
    request_id: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9._:-]*$",
                            description="for following one request across tiers in logs (no spaces, no newlines)")
    backend: BackendName | None = None  # runtime of the cloud's blocks; None: the cloud's default
    weights_digest: str = Field(default="", pattern=r"^([0-9a-f]{64})?$",
                                description="SHA-256 of the weights the edge expects the cloud's part to hold "
                                            "(splitcore.loading.WeightDigests.part); a mismatch is refused")

"""What a generation is asked and what it reports: the request, the link figures, the last event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edge_service.speculation import SpeculationStats
from splitcore.plan import Plan
from splitcore.schema import SamplingParams

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams = SamplingParams(temperature=0.0)
    stop: tuple[str, ...] = ()
    request_id: str = ""
    ignore_eos: bool = False  # keep generating past EOS (vLLM's extension; benchmarks fix the output length so)
    min_tokens: int = 0  # EOS and the stop token ids cannot be picked before this many tokens
    stop_token_ids: tuple[int, ...] = ()  # token ids that end the generation as EOS does
    logprobs: int | None = None  # alternatives per token to report with log-probabilities; None: none at all


@dataclass(frozen=True)
class TokenChoice:
    """A generated token's log-probability under the model (before temperature and top-p) and the `top` most
    likely ids with theirs."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class Piece(str):
    """A text piece of a generation (a `str`), with `tokens`, the count of tokens generated so far, and
    `logprobs`, the choices of the tokens since the previous piece when log-probabilities were asked for."""

    tokens: int
    logprobs: tuple[TokenChoice, ...]

    def __new__(cls, text: str, tokens: int = 0, logprobs: tuple[TokenChoice, ...] = ()) -> Piece:
        piece = super().__new__(cls, text)
        piece.tokens, piece.logprobs = tokens, logprobs
        return piece


@dataclass
class LinkStats:
    """What one generation moved across the link and how long the cloud computed."""

    prefill_bytes_up: int = 0
    prefill_bytes_down: int = 0
    decode_bytes_up: int = 0
    decode_bytes_down: int = 0
    decode_steps: int = 0  # exchanges after the prompt's
    decode_tokens: int = 0  # tokens those exchanges gave (more than one per exchange when speculating)
    cloud_compute_ms: float = 0.0
    round_trip_ms: float = 0.0

    def as_dict(self) -> dict:
        tokens = self.decode_tokens or self.decode_steps
        per_up = self.decode_bytes_up / tokens if tokens else 0.0
        per_down = self.decode_bytes_down / tokens if tokens else 0.0
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
    fallback: str | None = None  # why the generation finished on the edge alone, if it did
    replays: int = 0  # times the cloud's cache was rebuilt by replaying the prefix
    logprobs: list[TokenChoice] = field(default_factory=list)  # one per token, when asked for
    speculation: SpeculationStats | None = None  # what drafting did, when the generation could draft

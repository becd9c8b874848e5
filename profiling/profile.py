"""A measured profile of one model on one device: what each part costs, and where the figures came from.

Times are medians in milliseconds; sizes in bytes. Keys of the latency maps are token counts (prompt length
for prefill, context length for decode). The cost model interpolates between measured points.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

from pydantic import Field

from splitcore.errors import PlanError, UserError
from splitcore.schema import StrictModel

ZSTD_LEVELS = (1, 3, 9)  # the zstd levels profiled and searched
BATCH_SIZES = (1, 4, 16, 64)  # sessions per decode round, profiled for the batching runtime (torch)
BATCH_CONTEXT = 128  # each batched session's context while its round is timed
BUSY_SESSIONS = 16  # sessions at once while the service's cost per request in a crowd is measured


class PartCost(StrictModel):
    """Latency of one part (embeddings, one block, or the head) at measured token counts."""

    prefill_ms: dict[int, float] = Field(description="prompt length -> ms for the whole prompt")
    decode_ms: dict[int, float] = Field(description="context length -> ms for one new position")
    decode_batch_ms: dict[int, float] = Field(
        default_factory=dict,
        description=f"sessions -> ms of one batched decode round of that many sessions, each at {BATCH_CONTEXT} "
                    "positions of context; empty: the part runs each session's step on its own (no batching)")

    def prefill_at(self, tokens: int) -> float:
        return _interpolate(self.prefill_ms, tokens)

    def decode_at(self, context: int) -> float:
        return _interpolate(self.decode_ms, context)

    def batch_share(self, sessions: float) -> float:
        """The share of one session's lone decode step (`decode_at(BATCH_CONTEXT)`: a session alone on a range
        decodes on its own cache, unbatched) that each of `sessions` pays when they run as one batch: 1.0 alone,
        or for a part that does not batch; round(n) / (n x lone step) otherwise, between the lone step and the
        smallest measured round when 1 < n < 4. Past the largest measured batch, the share stays there (a
        batcher's `max_batch` splits bigger loads into rounds)."""
        if sessions <= 1 or len(self.decode_batch_ms) < 2 or 1 not in self.decode_batch_ms:
            return 1.0
        lone = _interpolate(self.decode_ms, BATCH_CONTEXT) if self.decode_ms else self.decode_batch_ms[1]
        if lone <= 0:
            return 1.0
        rounds = {**self.decode_batch_ms, 1: lone}
        n = min(sessions, max(rounds))
        return min(1.0, _interpolate_float(rounds, n) / (n * lone))


class CodecCost(StrictModel):
    """What one codec (dtype and zstd level) does to real hidden states of the model on this machine."""

    prefill_ratio: float = Field(description="frame body / raw payload for a many-position frame (<= 1)")
    decode_ratio: float = Field(description="the same for a one-position frame (1.0 when zstd does not help)")
    encode_ms_per_mib: float
    decode_ms_per_mib: float


class Machine(StrictModel):
    platform: str
    processor: str
    logical_cores: int
    threads: int = Field(description="torch intra-op threads used for the measurement")
    emulation: str = Field(default="", description="how a slower device was emulated, if it was")


class RuntimeCost(StrictModel):
    """The parts' latency on another runtime than the profile's own, and the weights that runtime holds besides."""

    embed: PartCost
    layers: list[PartCost]
    head: PartCost
    embed_weights_bytes: int = Field(description="what its copy of the embeddings occupies (the export's size)")
    layer_weights_bytes: list[int]
    head_weights_bytes: int


class Profile(StrictModel):
    """Per-part latency and memory of one model on one device."""

    device_name: str
    model_name: str
    fingerprint: str
    model_type: str
    num_layers: int
    hidden_size: int
    backend: str = "torch"
    machine: Machine
    versions: dict[str, str]
    created_at: str
    embed: PartCost
    layers: list[PartCost]
    head: PartCost = Field(description="final norm and LM head, on the last position")
    embed_weights_bytes: int
    layer_weights_bytes: list[int]
    head_weights_bytes: int = Field(description="0 when the head is tied to the embeddings")
    kv_bytes_per_token: list[int] = Field(description="per block: key and value cache bytes per position")
    codecs: dict[str, dict[int, CodecCost]] = Field(
        default_factory=dict, description="codec -> zstd level -> measured cost; empty: no compression modelled")
    peak_activation_bytes_per_token: int = Field(
        default=0, description="largest live intermediate of one block per position, computed from the config")
    runtimes: dict[str, RuntimeCost] = Field(
        default_factory=dict, description="other runtimes measured on this device (e.g. onnxruntime)")
    request_ms: float = Field(
        default=0.0, ge=0, description="what a lone shard request costs this machine's service besides the parts "
                                       "(middleware, frame codec, session, sampling, waking the threads for a "
                                       "round); 0: not measured (`cloud_service.selfcost`)")
    request_busy_ms: float = Field(
        default=0.0, ge=0, description=f"what each request adds to a busy service's batched round besides the "
                                       f"parts, measured with {BUSY_SESSIONS} sessions at once; it queues (0: not "
                                       f"measured)")

    def request_cost_ms(self, batch: float) -> float:
        """What each request of a round of `batch` sessions costs the service besides the parts. The two measured
        figures fit a cost per round shared by the round's requests and a cost per request: alone (`request_ms`)
        both, among `BUSY_SESSIONS` (`request_busy_ms`) the round's part divided among them."""
        if batch <= 1.0 or not self.request_busy_ms:  # alone, or not measured in a crowd
            return self.request_ms
        if self.request_busy_ms >= self.request_ms:  # no part per round to share
            return self.request_busy_ms
        per_round = (self.request_ms - self.request_busy_ms) * BUSY_SESSIONS / (BUSY_SESSIONS - 1)
        return self.request_ms - per_round + per_round / batch

    def backends(self) -> list[str]:
        """Every runtime this profile has figures for, its own first."""
        return [self.backend, *self.runtimes]

    def runtime(self, backend: str | None) -> RuntimeCost | None:
        """The figures of another runtime; None for the profile's own (`backend` None or `self.backend`).

        Raises:
            PlanError: the profile has no figures for that runtime.
        """
        if backend is None or backend == self.backend:
            return None
        cost = self.runtimes.get(backend)
        if cost is None:
            raise PlanError(f"the {self.device_name} profile has no figures for {backend!r}; measured: "
                            f"{', '.join(self.backends())}")
        return cost

    def on(self, backend: str | None) -> Profile:
        """This profile with the parts of `backend` (None: the profile's own).

        Raises:
            PlanError: the profile has no figures for that runtime.
        """
        cost = self.runtime(backend)
        if cost is None:
            return self
        return self.model_copy(update={"backend": backend, "embed": cost.embed, "layers": cost.layers,
                                       "head": cost.head})

    def slowed(self, factor: float) -> Profile:
        """This profile on a device `factor` times slower at compute (the edge's `--emulate-slowdown`).

        Block, embedding and head latencies scale; codec costs, sizes and memory do not, just as the emulation
        stretches only model compute.
        """
        if factor == 1.0:
            return self

        def scale(part: PartCost) -> PartCost:
            return PartCost(prefill_ms={k: v * factor for k, v in part.prefill_ms.items()},
                            decode_ms={k: v * factor for k, v in part.decode_ms.items()},
                            decode_batch_ms={k: v * factor for k, v in part.decode_batch_ms.items()})
        how = f"compute stretched {factor:g}x by sleeping after each step"
        machine = self.machine.model_copy(update={"emulation": "; ".join(filter(None, [self.machine.emulation, how]))})
        runtimes = {name: cost.model_copy(update={"embed": scale(cost.embed), "layers": [scale(p) for p in cost.layers],
                                                  "head": scale(cost.head)})
                    for name, cost in self.runtimes.items()}
        return self.model_copy(update={"embed": scale(self.embed), "layers": [scale(p) for p in self.layers],
                                       "head": scale(self.head), "machine": machine, "runtimes": runtimes})

    def codec_cost(self, codec: str, level: int) -> CodecCost | None:
        return self.codecs.get(codec, {}).get(level)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Profile:
        """Read a profile `edgesplit profile` wrote.

        Raises:
            UserError: the file is missing, unreadable, not JSON, or not a profile.
        """
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except OSError as exc:
            raise UserError(f"profile {str(path)!r} cannot be read: {exc.strerror or exc}") from None
        except ValueError as exc:  # json.JSONDecodeError and pydantic's ValidationError are ValueErrors
            first = str(exc).splitlines()
            raise UserError(f"profile {str(path)!r} is not a profile edgesplit wrote ({type(exc).__name__}: "
                            f"{first[0] if first else exc}); measure one with edgesplit profile") from None


def _interpolate(points: dict[int, float], x: int) -> float:
    """Piecewise-linear in token count, extrapolated linearly past the last two points (never below 0)."""
    return _interpolate_float(points, x)


def _interpolate_float(points: dict[int, float], x: float) -> float:
    xs = sorted(points)
    if len(xs) == 1:
        return points[xs[0]]
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1 = xs[i - 1], xs[i]
    y0, y1 = points[x0], points[x1]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))

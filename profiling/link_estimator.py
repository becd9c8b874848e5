"""Bandwidth and RTT from real exchanges with the cloud.

Each exchange gives (bytes both ways, elapsed time, the cloud's own compute time). The transfer time,
elapsed minus compute, is modelled as `rtt + bytes * 8 / bandwidth`: a line through the quickest exchange of
each size gives the bandwidth (slope), and no large exchange may beat it (each bounds the bandwidth from below;
on a link too fast for the jitter that bound is all there is). Decode steps alone all have the same size,
which pins the RTT but not the bandwidth: an active probe (one small and one large body) supplies the spread
when the service is idle. The confidence grows with the number of samples and the spread of their sizes.

Only exchanges of the last `max_age_s` count (or the newest few, when the link has been quiet that long), so
after the link changes the estimate follows within that horizon instead of averaging the old link in.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field

from splitcore.errors import UserError
from splitcore.schema import StrictModel

PROBE_SMALL, PROBE_LARGE = 64, 256 * 1024  # bytes: the spread that lets the estimator see the bandwidth
PROBE_MIN_LARGE = 4 * 1024  # bytes: the large probe never shrinks below this


class Link(StrictModel):
    """The edge-cloud link as the planner sees it."""

    bandwidth_bps: float = Field(gt=0, description="bits per second, each way")
    rtt_ms: float = Field(ge=0, description="round-trip time of an empty exchange")
    overhead_ms: float = Field(default=0.0, ge=0, description="per-request software cost on top of rtt (HTTP, codec)")


@dataclass(frozen=True)
class Sample:
    at_s: float
    bytes_total: int
    transfer_ms: float


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_bps: float
    rtt_ms: float
    confidence: float  # 0 (a guess) to 1 (many samples of well-spread sizes)
    samples: int
    # False when the recent exchanges could not measure the bandwidth (one size only, or a link so fast their
    # transfer times are lost in the jitter): it is then the last measured one, or a lower bound
    bandwidth_resolved: bool = True

    def as_link(self) -> Link:
        return Link(bandwidth_bps=self.bandwidth_bps, rtt_ms=self.rtt_ms)


class LinkEstimator:
    """Thread-safe; `observe` is called once per exchange by the orchestrator and the prober."""

    def __init__(self, window: int = 128, prior_bandwidth_bps: float = 100e6, prior_rtt_ms: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, max_age_s: float = 4.0, min_recent: int = 4) -> None:
        self._samples: deque[Sample] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._clock = clock
        self._prior = LinkEstimate(prior_bandwidth_bps, prior_rtt_ms, 0.0, 0, bandwidth_resolved=False)
        self.max_age_s = max_age_s  # exchanges older than this no longer count (unless too few are newer)
        self.min_recent = min_recent  # the newest this many always count, however old
        self.bytes_observed = 0  # both ways, every exchange since start
        self._resolved_bps = prior_bandwidth_bps  # the bandwidth last measured from a rise above the jitter
        self._bandwidth_bps = prior_bandwidth_bps  # the bandwidth last reported from well-spread sizes

    def observe(self, bytes_total: int, elapsed_ms: float, compute_ms: float = 0.0) -> None:
        with self._lock:
            self._samples.append(Sample(self._clock(), bytes_total, max(0.0, elapsed_ms - compute_ms)))
            self.bytes_observed += bytes_total

    def estimate(self) -> LinkEstimate:
        with self._lock:
            samples = list(self._samples)
        oldest = self._clock() - self.max_age_s
        recent = [s for s in samples if s.at_s >= oldest]
        samples = recent if len(recent) >= self.min_recent else samples[-self.min_recent:]
        if not samples:
            return self._prior
        xs = [float(s.bytes_total) for s in samples]
        ys = [s.transfer_ms for s in samples]
        if len(set(xs)) < 2 or max(xs) < 2 * min(xs):  # sizes too alike: only the RTT is known
            known = self._bandwidth_bps  # the last bandwidth seen from well-spread sizes, else the prior
            rtt = statistics.median(ys) - statistics.median(xs) * 8 / known * 1000
            return LinkEstimate(known, max(0.0, rtt), min(0.3, len(samples) / 30), len(samples),
                                bandwidth_resolved=False)
        spread = min(1.0, (max(xs) / min(xs)) / 100)
        confidence = min(1.0, len(samples) / 30) * (0.5 + 0.5 * spread)
        # The bandwidth from the lower envelope: the quickest exchange of each size class. Queueing, scheduling
        # and a busy peer only ever add time, so the quickest are the link itself; a least-squares line through
        # every exchange let one slow prefill pull a fast link's estimate down by 10x (loopback, 8 Mbit/s).
        classes = _classes(samples)
        envelope = _envelope(classes)
        slope = statistics.linear_regression(*zip(*envelope, strict=True))[0] if len(envelope) >= 2 else 0.0
        jitter = _jitter(classes)
        rise = slope * (envelope[-1][0] - envelope[0][0]) if len(envelope) >= 2 else 0.0
        resolved = slope > 0 and rise > jitter
        # Whatever the line says, no exchange can beat the link: each large one bounds the bandwidth from below.
        # A size class whose few exchanges all waited (a busy peer) must not read a fast link as slow.
        bound = _lower_bound(classes, jitter)
        if resolved:  # the larger exchanges take measurably longer: the slope is the bandwidth
            self._resolved_bps = self._bandwidth_bps = max(8 / (slope / 1000), bound)
        else:
            # Their extra time is lost in the jitter (a fast link, loopback): the bandwidth last measured (or the
            # prior) stands unless the quickest large exchange shows a faster link. Not kept as measured, so
            # bounds of later windows do not ratchet each other up.
            self._bandwidth_bps = max(self._resolved_bps, bound)
            confidence /= 2
        # The round trip of a typical exchange, each one's transfer at this bandwidth taken off.
        rtt = statistics.median(y - x * 8 / self._bandwidth_bps * 1000 for x, y in zip(xs, ys, strict=True))
        return LinkEstimate(self._bandwidth_bps, max(0.0, rtt), confidence, len(samples), resolved)

    def idle_for_s(self) -> float:
        with self._lock:
            return self._clock() - self._samples[-1].at_s if self._samples else float("inf")


def _size_class(nbytes: int) -> int:
    """Which half-octave of sizes an exchange of `nbytes` falls in."""
    return int(2 * math.log2(max(nbytes, 1)))


def _classes(samples: list[Sample]) -> dict[int, list[Sample]]:
    """The exchanges of each half-octave of sizes (`_size_class`), the classes in order of first appearance."""
    classes: dict[int, list[Sample]] = {}
    for s in samples:
        classes.setdefault(_size_class(s.bytes_total), []).append(s)
    return classes


def _envelope(classes: dict[int, list[Sample]]) -> list[tuple[float, float]]:
    """(bytes, transfer ms) of the quickest exchange in each half-octave of sizes, smallest first; a class whose
    quickest is slower than a larger class's quickest is left out (more bytes cannot cross sooner: every exchange
    of that class waited). Two prompt lengths whose prefills both waited 2-3 ms on the emulated 1 Gbit/s link
    flattened the line and read it as 3.4 Gbit/s (`bench/link_estimate.py`)."""
    quickest = [min(classes[k], key=lambda s: s.transfer_ms) for k in sorted(classes)]
    kept, floor = [], math.inf
    for s in reversed(quickest):  # largest first: keep a class only if no larger one was quicker
        if s.transfer_ms <= floor:
            kept.append((float(s.bytes_total), s.transfer_ms))
            floor = s.transfer_ms
    return kept[::-1]


def _lower_bound(classes: dict[int, list[Sample]], jitter: float, anchor_quantile: float = 0.1) -> float:
    """The least bandwidth (bits/s) the quickest large exchange allows: its bytes over its time beyond the round
    trip of the smallest frequent size (a low quantile of that class, not its minimum: the cloud's reported time
    taken off makes the noise two-sided). A time beyond it shorter than the `jitter` counts as the jitter, which is
    all it can show: one 2 us beyond read loopback as 319 Gbit/s (`bench/link_estimate.py`, once prompt frames
    stopped stalling). 0 when no large exchange took longer than that round trip."""
    ordered = [classes[k] for k in sorted(classes)]
    small = next((members for members in ordered if len(members) >= 3), ordered[0])
    times = sorted(s.transfer_ms for s in small)
    rtt = times[int(anchor_quantile * (len(times) - 1))]
    base = min(s.bytes_total for s in small)
    samples = [s for members in classes.values() for s in members]
    largest = max(s.bytes_total for s in samples)
    bounds = [(s.bytes_total - base) * 8 / (max(s.transfer_ms - rtt, jitter) / 1000) for s in samples
              if s.bytes_total >= largest / 2 and s.bytes_total >= 2 * base and s.transfer_ms > rtt]
    return max(bounds, default=0.0)


def _jitter(classes: dict[int, list[Sample]]) -> float:
    """How much slower than the quickest a typical exchange of the commonest size class is (ms): the noise a
    size's transfer time must rise above to be seen."""
    commonest = [s.transfer_ms for s in max(classes.values(), key=len)]
    return statistics.median(commonest) - min(commonest) if len(commonest) >= 3 else 0.0


def parse_bandwidth(text: str) -> float:
    """'10mbit', '1gbit', '500kbit', '2e6' (bits per second) -> bits per second.

    Raises:
        UserError: not a positive bandwidth in those units.
    """
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1.0, "bps": 1.0}
    t = text.strip().lower()
    factor = next((f for unit, f in units.items() if t.endswith(unit)), 1.0)
    number = next((t[: -len(unit)] for unit in units if t.endswith(unit)), t)
    value = _number(number, text, "a bandwidth such as 10mbit, 1gbit, 500kbit or 2e6 (bits per second)") * factor
    if value <= 0:
        raise UserError(f"bandwidth {text!r} must be more than 0")
    return value


def parse_duration_ms(text: str) -> float:
    """'40ms', '0.04s', '40' (milliseconds) -> milliseconds.

    Raises:
        UserError: not a duration of at least 0 in those units.
    """
    t = text.strip().lower()
    what = "a duration such as 40ms, 0.04s or 40 (milliseconds)"
    if t.endswith("ms"):
        value = _number(t[:-2], text, what)
    elif t.endswith("s"):
        value = _number(t[:-1], text, what) * 1000
    else:
        value = _number(t, text, what)
    if value < 0:
        raise UserError(f"duration {text!r} must not be negative")
    return value


def _number(text: str, given: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{given!r} is not {what}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise UserError(f"{given!r} is not {what}")
    return value


def probe_link(probe: Callable[[int], float], estimator: LinkEstimator, rounds: int = 4,
               large_bytes: int = PROBE_LARGE) -> None:
    """Time `rounds` small and large probe exchanges into the estimator (`probe(nbytes) -> ms`)."""
    for _ in range(rounds):
        for nbytes in (PROBE_SMALL, large_bytes):
            estimator.observe(nbytes, probe(nbytes))


def probe_size(bandwidth_bps: float, budget_ms: float = 50.0) -> int:
    """A large probe that takes about `budget_ms` on the estimated link, so probing a slow link stays cheap."""
    return int(min(PROBE_LARGE, max(PROBE_MIN_LARGE, bandwidth_bps * budget_ms / 1000 / 8)))

"""Bandwidth and RTT from observed exchanges."""

from __future__ import annotations

import pytest

from profiling.link_estimator import LinkEstimator, parse_bandwidth, parse_duration_ms
from tests.fakes import Clock


def exchange(nbytes: int, bandwidth_bps: float, rtt_ms: float, compute_ms: float = 0.0) -> tuple[int, float, float]:
    return nbytes, rtt_ms + nbytes * 8 / bandwidth_bps * 1000 + compute_ms, compute_ms


def probes(est: LinkEstimator, clock: Clock, bandwidth_bps: float, rtt_ms: float, rounds: int) -> None:
    """`rounds` small and large probes over a link, 0.1 s apart."""
    for nbytes in [64, 262144] * rounds:
        est.observe(*exchange(nbytes, bandwidth_bps, rtt_ms))
        clock.now += 0.1


def test_decode_sized_frames_alone_pin_the_rtt_but_not_the_bandwidth() -> None:
    est = LinkEstimator(prior_bandwidth_bps=50e6)
    for _ in range(20):
        est.observe(*exchange(830, 10e6, 40.0, compute_ms=5.0))
    e = est.estimate()
    assert e.bandwidth_bps == 50e6 and e.confidence <= 0.3
    assert e.rtt_ms == pytest.approx(40.0 + 830 * 8 / 10e6 * 1000 - 830 * 8 / 50e6 * 1000)


def test_frames_of_several_sizes_give_bandwidth_and_rtt() -> None:
    est = LinkEstimator()
    for nbytes in [64, 830, 262144, 64, 262144, 2048] * 5:
        est.observe(*exchange(nbytes, 10e6, 40.0, compute_ms=3.0))
    e = est.estimate()
    assert e.bandwidth_bps == pytest.approx(10e6, rel=1e-6) and e.rtt_ms == pytest.approx(40.0, abs=1e-6)
    assert e.confidence > 0.5 and e.samples == 30


def test_an_unobserved_link_reports_the_prior_with_no_confidence() -> None:
    e = LinkEstimator(prior_bandwidth_bps=1e8, prior_rtt_ms=2).estimate()
    assert (e.bandwidth_bps, e.rtt_ms, e.confidence) == (1e8, 2, 0.0)


def test_link_units_parse() -> None:
    assert parse_bandwidth("10mbit") == 10e6 and parse_bandwidth("1gbit") == 1e9 and parse_bandwidth("500kbit") == 5e5
    assert parse_duration_ms("40ms") == 40 and parse_duration_ms("0.15s") == 150


def test_the_estimate_follows_a_changed_link_once_old_exchanges_age_out() -> None:
    clock = Clock()
    est = LinkEstimator(clock=clock, max_age_s=5.0, min_recent=4)
    probes(est, clock, 100e6, 1.0, rounds=10)
    assert est.estimate().rtt_ms == pytest.approx(1.0, abs=1e-6)
    clock.now += 10.0
    probes(est, clock, 5e6, 80.0, rounds=3)
    e = est.estimate()
    assert e.rtt_ms == pytest.approx(80.0, abs=1e-6) and e.bandwidth_bps == pytest.approx(5e6, rel=1e-6)


def test_a_quiet_link_keeps_its_newest_exchanges() -> None:
    clock = Clock()
    est = LinkEstimator(clock=clock, max_age_s=1.0, min_recent=4)
    probes(est, clock, 20e6, 10.0, rounds=2)
    clock.now += 100.0
    e = est.estimate()
    assert e.samples == 4 and e.rtt_ms == pytest.approx(10.0, abs=1e-6)


def test_decode_only_traffic_keeps_the_bandwidth_last_measured_not_the_prior() -> None:
    clock = Clock()
    est = LinkEstimator(clock=clock, prior_bandwidth_bps=100e6, max_age_s=1.0, min_recent=4)
    probes(est, clock, 8e6, 20.0, rounds=4)
    assert est.estimate().bandwidth_bps == pytest.approx(8e6, rel=1e-6)
    clock.now += 5.0
    for _ in range(10):
        est.observe(*exchange(830, 8e6, 20.0))
    e = est.estimate()
    assert e.bandwidth_bps == pytest.approx(8e6, rel=1e-6) and e.rtt_ms == pytest.approx(20.0, abs=1e-6)


def test_a_slow_exchange_does_not_drag_a_measured_bandwidth_down() -> None:
    est = LinkEstimator()
    sizes = [1200] * 19 + [40_000]  # a generation: decode steps and one prefill
    for i, nbytes in enumerate(sizes * 4):
        _, elapsed, _ = exchange(nbytes, 10e6, 20.0)
        est.observe(nbytes, elapsed + (30.0 if i == 19 else 0.2 * (i % 3)))  # one prefill waited 30 ms more
    e = est.estimate()
    assert e.bandwidth_resolved and e.bandwidth_bps == pytest.approx(10e6, rel=0.1)
    assert e.rtt_ms == pytest.approx(20.2, abs=0.3)


def test_on_a_link_too_fast_for_the_frames_the_bandwidth_is_a_lower_bound() -> None:
    est = LinkEstimator(prior_bandwidth_bps=100e6)
    for i in range(60):  # 20 Gbit/s: 150 kB take 0.06 ms, less than the 0.3 ms jitter of each exchange
        nbytes = 150_000 if i % 10 == 0 else 1200
        _, elapsed, _ = exchange(nbytes, 20e9, 1.0)
        est.observe(nbytes, elapsed + 0.1 * (i % 4))
    e = est.estimate()
    assert not e.bandwidth_resolved
    assert e.bandwidth_bps >= (150_000 - 1200) * 8 / 0.3e-3 * 0.99  # what the jitter allows, at least
    assert e.rtt_ms == pytest.approx(1.1, abs=0.15)


def test_a_size_class_whose_exchanges_all_waited_does_not_read_a_fast_link_as_slow() -> None:
    """Loopback as measured (bench/link_estimate.py): decode steps of 508 bytes with 0.3 ms of jitter, two prefills
    of each prompt length, and both of one length delayed by a busy peer. The line through each size's quickest
    exchange then rose above the jitter and read a 4 Gbit/s link as 1 Gbit/s; the quickest large exchange bounds
    the bandwidth from below."""
    est = LinkEstimator(prior_bandwidth_bps=100e6)
    for i in range(60):
        nbytes, elapsed, compute = exchange(508, 4e9, 1.0, compute_ms=2.0)
        est.observe(nbytes, elapsed + 0.1 * (i % 4), compute)
    for nbytes in (3424, 6331, 15079, 73377, 108969, 144716) * 2:
        waited = 2.5 if nbytes == 108969 else 0.0
        _, elapsed, _ = exchange(nbytes, 4e9, 1.0, compute_ms=5.0)
        est.observe(nbytes, elapsed + waited, 5.0)
    e = est.estimate()
    assert e.bandwidth_bps == pytest.approx(4e9, rel=0.1)
    assert e.rtt_ms == pytest.approx(1.1, abs=0.15)


def test_smaller_sizes_whose_exchanges_all_waited_do_not_read_a_link_as_faster() -> None:
    """The emulated 1 Gbit/s link as measured (bench/link_estimate.py): both prefills of two short prompts waited
    2-3 ms, so their quickest exchanges were slower than longer prompts' and the line through each size's quickest
    flattened to 3.4 Gbit/s. A size whose quickest is slower than a larger size's quickest has only waited."""
    est = LinkEstimator(prior_bandwidth_bps=100e6)
    for i in range(60):
        nbytes, elapsed, compute = exchange(508, 1e9, 2.5, compute_ms=6.0)
        est.observe(nbytes, elapsed + 0.1 * (i % 4), compute)
    for n, nbytes in enumerate((3424, 6331, 15079, 73377, 108969, 144716) * 2):
        waited = (2.0, 3.0)[n // 6] if nbytes in (6331, 15079) else 0.1 * (n % 3)
        _, elapsed, _ = exchange(nbytes, 1e9, 2.5, compute_ms=6.0)
        est.observe(nbytes, elapsed + waited, 6.0)
    e = est.estimate()
    assert e.bandwidth_resolved
    assert e.bandwidth_bps == pytest.approx(1e9, rel=0.25)


def test_on_a_fast_link_a_noisy_window_does_not_ratchet_the_bound_up() -> None:
    """An unresolved window's bound is reported, not kept as measured: a later, noisier window reads its own bound
    (what its jitter allows), not the highest any window ever saw."""
    clock = Clock()
    est = LinkEstimator(clock=clock, prior_bandwidth_bps=100e6, max_age_s=1.0, min_recent=4)

    def window(bandwidth_bps: float, jitter_ms: float) -> float:
        for i in range(40):
            nbytes = 150_000 if i % 10 == 0 else 1200
            _, elapsed, _ = exchange(nbytes, bandwidth_bps, 1.0)
            est.observe(nbytes, elapsed + jitter_ms * (i % 2))  # 20 of 36 decode steps: median - quickest
        e = est.estimate()
        assert not e.bandwidth_resolved
        clock.now += 10.0
        return e.bandwidth_bps
    assert window(40e9, 0.15) == pytest.approx((150_000 - 1200) * 8 / 0.15e-3, rel=0.05)
    assert window(10e9, 0.3) == pytest.approx((150_000 - 1200) * 8 / 0.3e-3, rel=0.05)


def test_a_large_exchange_just_beyond_the_round_trip_shows_no_more_than_the_jitter_allows() -> None:
    """Loopback as recorded once prompt frames stopped stalling (bench/link_estimate.py): one prefill's time beyond
    the cloud's came out 2 us above the decode steps' round trip (the cloud's reported time makes the noise
    two-sided), and the bound it gave read a 4 Gbit/s link as 319 Gbit/s."""
    est = LinkEstimator(prior_bandwidth_bps=100e6)
    for i in range(60):
        nbytes, elapsed, compute = exchange(508, 4e9, 1.0, compute_ms=2.0)
        est.observe(nbytes, elapsed + 0.1 * (i % 4), compute)
    for nbytes in (3424, 6331, 15079, 73377, 108969, 144716) * 2:
        _, elapsed, _ = exchange(nbytes, 4e9, 1.0, compute_ms=5.0)
        est.observe(nbytes, elapsed, 5.0)
    est.observe(108969, 1.0 + 508 * 8 / 4e9 * 1000 + 0.002 + 5.0, 5.0)  # 2 us beyond the decode steps' quickest
    e = est.estimate()
    assert e.bandwidth_bps == pytest.approx(4e9, rel=0.5)

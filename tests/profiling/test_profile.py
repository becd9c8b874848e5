"""A profile of an emulated slower device scales compute, and only compute."""

from __future__ import annotations

import pytest

from profiling.synthetic import synthetic_profile


def test_a_slowed_profile_stretches_compute_and_says_how() -> None:
    base = synthetic_profile("edge", [2.0, 3.0])
    slow = base.slowed(4.0)
    assert slow.layers[1].decode_at(16) == pytest.approx(4 * base.layers[1].decode_at(16))
    assert slow.layers[0].prefill_at(256) == pytest.approx(4 * base.layers[0].prefill_at(256))
    assert slow.head.decode_at(16) == pytest.approx(4 * base.head.decode_at(16))
    assert slow.embed.prefill_at(16) == pytest.approx(4 * base.embed.prefill_at(16))
    assert slow.layer_weights_bytes == base.layer_weights_bytes and slow.codecs == base.codecs
    assert "4x" in slow.machine.emulation and base.machine.emulation in slow.machine.emulation
    assert base.slowed(1.0) is base

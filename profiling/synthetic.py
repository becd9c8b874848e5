"""Hand-built profiles for planner tests and what-if questions (never mistaken for measurements).

Their `device_name` says "synthetic" and `machine.emulation` says how the figures were made.
"""

from __future__ import annotations

import random

from profiling.profile import Machine, PartCost, Profile, RuntimeCost


def _cost(prefill_ms_per_token: float, decode_ms: float, fixed_ms: float = 0.0,
          rounds: dict[int, float] | None = None) -> PartCost:
    return PartCost(prefill_ms={16: fixed_ms + 16 * prefill_ms_per_token, 256: fixed_ms + 256 * prefill_ms_per_token},
                    decode_ms={16: decode_ms, 512: decode_ms * 1.2},
                    decode_batch_ms={k: decode_ms * r for k, r in (rounds or {}).items()})


def synthetic_profile(name: str, layer_decode_ms: list[float], hidden_size: int = 768,
                      prefill_per_token: float = 0.1, layer_weights_bytes: int = 7_000_000,
                      embed_weights_bytes: int = 38_000_000, head_ms: float = 1.0,
                      batch_rounds: dict[int, float] | None = None) -> Profile:
    """A profile whose block i costs `layer_decode_ms[i]` per decode step and `prefill_per_token` x that per token.

    `batch_rounds`: sessions -> a batched decode round's time as a multiple of one session's step (every part
    alike); None: nothing batches.
    """
    n = len(layer_decode_ms)
    return Profile(
        device_name=f"synthetic-{name}", model_name="synthetic", fingerprint="synthetic", model_type="gpt2",
        num_layers=n, hidden_size=hidden_size,
        machine=Machine(platform="synthetic", processor="synthetic", logical_cores=1, threads=1,
                        emulation="hand-built figures, not a measurement"),
        versions={}, created_at="1970-01-01T00:00:00+00:00",
        embed=_cost(0.001, 0.05, rounds=batch_rounds),
        layers=[_cost(ms * prefill_per_token, ms, rounds=batch_rounds) for ms in layer_decode_ms],
        head=_cost(0.0, head_ms, fixed_ms=head_ms, rounds=batch_rounds), embed_weights_bytes=embed_weights_bytes,
        layer_weights_bytes=[layer_weights_bytes] * n, head_weights_bytes=0,
        kv_bytes_per_token=[2 * 2 * hidden_size] * n, peak_activation_bytes_per_token=4 * 6 * hidden_size,
    )


def random_profiles(rng: random.Random, num_layers: int) -> tuple[Profile, Profile]:
    """An edge 2-20x slower than the cloud, with per-block variation."""
    base = [rng.uniform(0.5, 3.0) for _ in range(num_layers)]
    slowdown = rng.uniform(2, 20)
    edge = synthetic_profile("edge", [ms * slowdown * rng.uniform(0.8, 1.2) for ms in base],
                             head_ms=rng.uniform(0.5, 3) * slowdown)
    cloud = synthetic_profile("cloud", base, head_ms=rng.uniform(0.5, 3))
    return edge, cloud


def with_runtime(profile: Profile, name: str, speedup: float, weights_bytes: int = 2_000_000) -> Profile:
    """`profile` with figures for another runtime whose parts run `speedup` x as fast (hand-built, like the rest)."""
    def faster(part: PartCost) -> PartCost:
        return PartCost(prefill_ms={k: v / speedup for k, v in part.prefill_ms.items()},
                        decode_ms={k: v / speedup for k, v in part.decode_ms.items()})
    cost = RuntimeCost(embed=faster(profile.embed), layers=[faster(p) for p in profile.layers],
                       head=faster(profile.head), embed_weights_bytes=weights_bytes,
                       layer_weights_bytes=[weights_bytes] * profile.num_layers, head_weights_bytes=0)
    return profile.model_copy(update={"runtimes": {**profile.runtimes, name: cost}})

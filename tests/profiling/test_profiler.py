"""Measuring a profile on this machine, and its file form."""

from __future__ import annotations

import statistics
from pathlib import Path

from profiling.profile import Profile
from profiling.profiler import measure_profile
from splitcore.loading import LoadedModel


def test_a_measured_profile_covers_every_part_and_says_where_it_came_from(models: dict[str, LoadedModel],
                                                                          tmp_path: Path) -> None:
    loaded = models["llama"]
    profile = measure_profile(loaded, "test-device", repeats=2, prefill=(8, 32), decode=(8, 64),
                              backends=["torch"])
    assert profile.runtimes == {}
    assert profile.num_layers == len(profile.layers) == 4 and profile.fingerprint == loaded.fingerprint
    assert all(ms > 0 for part in profile.layers for ms in [*part.prefill_ms.values(), *part.decode_ms.values()])
    block = loaded.layered.blocks[0]
    assert profile.layer_weights_bytes[0] == sum(p.numel() * 4 for p in block.parameters())
    head_dim = 64 // 4
    assert profile.kv_bytes_per_token == [2 * 2 * head_dim * 4] * 4  # keys and values, 2 kv heads, fp32
    assert profile.head_weights_bytes > 0  # llama's head is not tied
    assert profile.peak_activation_bytes_per_token == 4 * (2 * 128 + 2 * 64)  # gate and up (128 wide), in and out
    assert profile.versions["torch"] and profile.machine.threads >= 1 and profile.created_at
    for part in [profile.embed, *profile.layers, profile.head]:  # torch batches: rounds of 1, 4, 16, 64 sessions
        assert set(part.decode_batch_ms) == {1, 4, 16, 64} and all(ms > 0 for ms in part.decode_batch_ms.values())
    # a round of 64 sessions costs each far less than its own step (the tiny model's step is mostly overhead):
    # 0.06-0.18 of it per block when quiet; the median over blocks, as one block's two timings can both be
    # disturbed when both cores are busy (one block read over 0.5 under two spinning processes)
    assert statistics.median(part.batch_share(64) for part in profile.layers) < 0.5
    saved = profile.save(tmp_path / "p.json")
    assert Profile.load(saved) == profile


def test_codec_costs_are_measured_on_real_hidden_states(models: dict[str, LoadedModel]) -> None:
    from profiling.profile import ZSTD_LEVELS
    from profiling.profiler import measure_codecs

    codecs = measure_codecs(models["gpt2"].layered, repeats=2, positions=32)
    assert set(codecs) == {"fp32", "fp16", "bf16", "int8"}
    for levels in codecs.values():
        assert set(levels) == set(ZSTD_LEVELS)
        for cost in levels.values():
            assert 0 < cost.prefill_ratio <= 1.0 and 0 < cost.decode_ratio <= 1.0 and cost.encode_ms_per_mib > 0


def test_the_profiler_measures_onnxruntime_too_and_the_size_of_its_weights(models: dict[str, LoadedModel],
                                                                          onnx_dir: Path) -> None:
    loaded = models["gpt2"]
    profile = measure_profile(loaded, "test-device", repeats=2, prefill=(8, 32), decode=(8, 64), onnx_dir=onnx_dir)
    assert profile.backends() == ["torch", "onnxruntime"]
    ort = profile.runtimes["onnxruntime"]
    assert len(ort.layers) == 4
    assert all(ms > 0 for part in [ort.embed, ort.head, *ort.layers]
               for ms in [*part.prefill_ms.values(), *part.decode_ms.values()])
    weights = profile.layer_weights_bytes[0]
    assert weights < ort.layer_weights_bytes[0] < weights * 1.2  # fp32 weights plus the graph
    assert profile.on("onnxruntime").layers == ort.layers
    assert all(not part.decode_batch_ms for part in [ort.embed, ort.head, *ort.layers])  # ORT steps run one by one
    assert ort.layers[0].batch_share(32) == 1.0
    quantized = measure_profile(loaded, "test-device", repeats=1, prefill=(8,), decode=(8,), onnx_dir=onnx_dir,
                                quantize=True)
    assert quantized.runtimes["onnxruntime"].layer_weights_bytes[0] < weights * 0.6  # int8 weights (biases fp32)


def test_a_profile_written_before_batching_still_loads_and_means_no_batching(tmp_path: Path) -> None:
    from profiling.synthetic import synthetic_profile

    old = synthetic_profile("old", [1.0, 2.0]).model_dump(mode="json")
    for part in [old["embed"], old["head"], *old["layers"]]:
        del part["decode_batch_ms"]
    del old["request_ms"], old["request_busy_ms"]
    path = tmp_path / "old.json"
    path.write_text(__import__("json").dumps(old))
    profile = Profile.load(path)
    assert profile.layers[0].batch_share(16) == 1.0 and profile.request_ms == 0.0

"""ONNX Runtime shards against PyTorch shards: same hidden states (within fp32 rounding), same greedy tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitcore.backends import OrtRunner, Runner, Runners, TorchRunner
from splitcore.errors import UnsupportedModelError
from splitcore.loading import LoadedModel
from splitcore.onnx_export import ExportCache
from splitcore.ranges import LayerRange
from splitcore.testing import reference_tokens

TOLERANCE = 1e-3  # fp32 rounding through a few blocks of init-range-0.3 weights: measured below 1e-4


def _steps(runner: Runner, layers: LayerRange, m: LoadedModel, embed: bool) -> list[torch.Tensor]:
    """A 7-position prefill then 4 one-position decode steps over the runner's own cache."""
    gen = torch.Generator().manual_seed(1)
    state = runner.new_state()
    out = []
    for seq in (7, 1, 1, 1, 1):
        if embed:
            out.append(runner.run(state, layers, input_ids=torch.randint(1, m.layered.vocab_size, (seq,),
                                                                           generator=gen)))
        else:
            out.append(runner.run(state, layers, hidden=torch.randn(seq, m.layered.hidden_size, generator=gen)))
    assert state.position == 11
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("span", [(0, 4), (0, 1), (1, 3), (3, 4)])
def test_ort_range_matches_torch_range_in_prefill_and_decode(models: dict[str, LoadedModel], onnx_dir: Path,
                                                             family: str, span: tuple[int, int]) -> None:
    m = models[family]
    layers, embed = LayerRange(start=span[0], end=span[1]), span[0] == 0
    ort = OrtRunner(m.layered, ExportCache(onnx_dir))
    got, want = _steps(ort, layers, m, embed), _steps(TorchRunner(m.layered), layers, m, embed)
    diffs = [float((g - w).abs().max()) for g, w in zip(got, want, strict=True)]
    print(f"{family} {layers} embed={embed}: max abs diff per step {[f'{d:.1e}' for d in diffs]}")
    assert max(diffs) < TOLERANCE, diffs
    assert all(g.shape == w.shape for g, w in zip(got, want, strict=True))


def _greedy(runner: Runner, m: LoadedModel, prompt: list[int], n: int) -> list[int]:
    state, ids, tokens = runner.new_state(), torch.tensor(prompt), []
    everything = LayerRange(start=0, end=m.layered.num_layers)
    for _ in range(n):
        tokens.append(int(runner.logits(runner.run(state, everything, input_ids=ids)).argmax()))
        ids = torch.tensor(tokens[-1:])
    return tokens


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_ort_greedy_tokens_equal_torch_and_the_unsplit_model(models: dict[str, LoadedModel], onnx_dir: Path,
                                                             family: str) -> None:
    m = models[family]
    prompt = m.tokenizer("The edge keeps the first layers")["input_ids"]  # type: ignore[misc]
    reference = reference_tokens(m, prompt, 16, min_new_tokens=16)
    assert _greedy(TorchRunner(m.layered), m, prompt, 16) == reference
    assert _greedy(OrtRunner(m.layered, ExportCache(onnx_dir)), m, prompt, 16) == reference


def test_ort_head_gives_torch_logits(models: dict[str, LoadedModel], onnx_dir: Path) -> None:
    m = models["llama"].layered
    hidden = torch.randn(1, 3, m.hidden_size)
    got = OrtRunner(m, ExportCache(onnx_dir)).logits(hidden)
    assert got.shape == (1, m.vocab_size)
    assert float((got - m.logits(hidden)).abs().max()) < TOLERANCE


def test_exports_are_cached_on_disk_and_keyed_by_the_weights(models: dict[str, LoadedModel], tmp_path: Path) -> None:
    m = models["gpt2"].layered
    cache = ExportCache(tmp_path)
    first = cache.range(m, LayerRange(start=1, end=2), embed=False)
    stamp = first.stat().st_mtime_ns
    assert cache.range(m, LayerRange(start=1, end=2), embed=False) == first
    assert first.stat().st_mtime_ns == stamp, "a cached export is not written again"
    other = models["gpt2"].layered.blocks[1]
    with torch.no_grad():
        saved = other.mlp.c_fc.weight.clone()
        other.mlp.c_fc.weight.add_(1.0)
        try:
            assert cache.range(m, LayerRange(start=1, end=2), embed=False) != first
        finally:
            other.mlp.c_fc.weight.copy_(saved)
    assert not list(tmp_path.glob("*.tmp.onnx")), "no half-written file is left behind"


def test_sliding_window_blocks_are_refused_with_a_clear_error(models: dict[str, LoadedModel], tmp_path: Path) -> None:
    runner = OrtRunner(models["mistral"].layered, ExportCache(tmp_path))
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        runner.run(runner.new_state(), LayerRange(start=0, end=2), hidden=torch.randn(3, 64))


def test_runners_build_each_backend_once_and_default_to_the_tier_setting(models: dict[str, LoadedModel],
                                                                         onnx_dir: Path) -> None:
    runners = Runners(models["gpt2"].layered, default="onnxruntime", onnx_dir=onnx_dir)
    assert runners.get().name == "onnxruntime"
    assert runners.get("torch").name == "torch"
    assert runners.get("onnxruntime") is runners.get()


def test_the_export_of_a_model_whose_blocks_run_packed_forwards_is_unchanged(tmp_path: Path) -> None:
    """A tier's batcher sets the packed attention on its model's blocks (`splitcore.batched.enable_packing`); an
    ONNX export made after that traces the same SDPA attention and matches PyTorch."""
    from splitcore.batched import enable_packing
    from splitcore.testing import tiny_model

    m = tiny_model("llama", seed=5)
    assert enable_packing(m.layered)
    layers = LayerRange(start=1, end=3)
    ort = OrtRunner(m.layered, ExportCache(tmp_path))
    got, want = _steps(ort, layers, m, False), _steps(TorchRunner(m.layered), layers, m, False)
    assert max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True)) < TOLERANCE


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_rolled_back_cache_is_the_cache_of_the_kept_positions(models: dict[str, LoadedModel], onnx_dir: Path,
                                                                backend: str) -> None:
    """Speculation's rollback: a session that decoded in a running batch (torch) then verified 4 positions and
    kept 1 answers the next positions as a session that only ever saw the kept ones, position by position."""
    m = models["llama"]
    layers = LayerRange(start=0, end=2)
    runner: Runner = TorchRunner(m.layered) if backend == "torch" else OrtRunner(m.layered, ExportCache(onnx_dir))
    ids = torch.randint(1, m.layered.vocab_size, (12,), generator=torch.Generator().manual_seed(3))
    state, other = runner.new_state(), runner.new_state()
    runner.run(state, layers, input_ids=ids[:5])
    runner.run(other, layers, input_ids=ids[:3])
    for i in (5, 6):  # decode rounds of both sessions together: torch keeps them in a running batch's storage
        if isinstance(runner, TorchRunner):
            assert runner.batcher is not None
            futures = [runner.batcher.submit(s, layers, input_ids=ids[i:i + 1]) for s in (state, other)]
            runner.batcher.run_round()
            assert all(f.done() for f in futures)
        else:
            runner.run(state, layers, input_ids=ids[i:i + 1])
    if isinstance(runner, TorchRunner):
        assert state.slot is not None  # the rollback has to take it out of the running batch first
    drafts = torch.tensor([7, 8, 9, 10])
    runner.run(state, layers, input_ids=drafts)  # positions 7..10; the first is kept, three are rejected
    runner.rollback(state, 8)
    assert state.position == 8
    straight = runner.new_state()
    runner.run(straight, layers, input_ids=torch.cat([ids[:7], drafts[:1]]))
    tail = ids[8:11]
    got, want = runner.run(state, layers, input_ids=tail), runner.run(straight, layers, input_ids=tail)
    assert got.shape == want.shape == (1, 3, m.layered.hidden_size)
    for position in range(3):
        assert torch.allclose(got[0, position], want[0, position], rtol=1e-5, atol=1e-4), position  # sums in
        # another order (a running batch, a chunk) differ in the last bits: about 3e-5 of values near 50

"""Measuring a profile: per-part latency for prefill and decode, and memory, on this machine.

Each block is timed alone over its own KV cache with random hidden states (the cost of a block does not
depend on the values), after a warm-up, as the median of `repeats` runs. A slower device can be emulated
honestly with fewer threads (and pinned cores); the profile records how.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import onnxruntime
import torch
import transformers

from profiling.profile import (
    BATCH_CONTEXT,
    BATCH_SIZES,
    ZSTD_LEVELS,
    CodecCost,
    Machine,
    PartCost,
    Profile,
    RuntimeCost,
)
from splitcore.backends import BACKENDS, OrtRunner, Runner, Runners, State, TorchRunner
from splitcore.batched import head_logits
from splitcore.batching import Batcher, BatchLimits
from splitcore.codec import DTYPE_BY_NAME, Compressor, Decompressor, quantise
from splitcore.defaults import MIB
from splitcore.kvcache import TorchState
from splitcore.layered import LayeredModel
from splitcore.loading import LoadedModel
from splitcore.plan import BackendName
from splitcore.ranges import LayerRange
from splitcore.shard import ShardState, run_range

PREFILL_LENGTHS = (16, 64, 256)
DECODE_CONTEXTS = (16, 128, 512)


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _prefilled(runner: Runner, block: LayerRange, context: int) -> State:
    state = runner.new_state()
    if context and len(block):
        runner.run(state, block, hidden=torch.randn(1, context, runner.model.hidden_size))
    elif context:
        state.position = context
    return state


@torch.inference_mode()
def _block_cost(runner: Runner, i: int, prefill: Iterable[int], decode: Iterable[int], repeats: int) -> PartCost:
    block, width = LayerRange(start=i, end=i + 1), runner.model.hidden_size

    def prefill_run(n: int) -> Callable[[], object]:
        hidden = torch.randn(1, n, width)
        return lambda: runner.run(runner.new_state(), block, hidden=hidden)

    def decode_run(context: int) -> Callable[[], object]:
        state, one = _prefilled(runner, block, context), torch.randn(1, 1, width)
        return lambda: runner.run(state, block, hidden=one)  # the context grows by one per run: negligible

    return PartCost(prefill_ms={n: _median_ms(prefill_run(n), repeats) for n in prefill},
                    decode_ms={c: _median_ms(decode_run(c), repeats) for c in decode})


@torch.inference_mode()
def decode_batch_ms(m: LayeredModel, layers: LayerRange, sizes: Iterable[int], repeats: int,
                    context: int = BATCH_CONTEXT) -> dict[int, float]:
    """ms of one decode round of n sessions on `layers` through the batcher the tiers run (`splitcore.batching`),
    each session at `context` positions, for each n of `sizes`: what a batched tier pays per round."""
    return {n: _median_ms(_decode_round(m, layers, n, context), _batch_rounds(repeats)) for n in sizes}


def _batch_rounds(repeats: int) -> int:
    """Timed rounds per batch size: rounds are short and noisy, so at least 9."""
    return max(repeats, 9)


def _decode_round(m: LayeredModel, layers: LayerRange, n: int, context: int) -> Callable[[], None]:
    """A decode round of `n` sessions that have read `context` positions; each call runs the next one (the first
    copies each session's cache into its row of the running batch: `_median_ms` warms up with it)."""
    batcher = Batcher(m, BatchLimits(max_batch=n, max_tokens=max(n, 1024), prefill_chunk=1024))
    states = [TorchState() for _ in range(n)]
    for state in states:
        batcher.submit(state, layers, hidden=torch.randn(context, m.hidden_size))
    while batcher.waiting:  # the prompts, a few sessions per round
        batcher.run_round()
    x = torch.randn(n, m.hidden_size)

    def round_() -> None:
        futures = [batcher.submit(state, layers, hidden=x[i]) for i, state in enumerate(states)]
        batcher.run_round()
        assert all(f.done() for f in futures), "one round runs every session's decode step"
    return round_


@torch.inference_mode()
def _head_batch_ms(m: LayeredModel, sizes: Iterable[int], repeats: int) -> dict[int, float]:
    def head(n: int) -> Callable[[], object]:
        rows = torch.randn(n, m.hidden_size)
        return lambda: head_logits(m, rows)
    return {n: _median_ms(head(n), repeats) for n in sizes}


@torch.inference_mode()
def _embed_batch_ms(m: LayeredModel, sizes: Iterable[int], repeats: int) -> dict[int, float]:
    def embed(n: int) -> Callable[[], object]:
        ids = torch.randint(0, m.vocab_size, (n, 1))
        positions = torch.full((n, 1), BATCH_CONTEXT)
        return lambda: m.embed(ids, positions)
    return {n: _median_ms(embed(n), repeats) for n in sizes}


@torch.inference_mode()
def _embed_and_head(runner: Runner, prefill: Iterable[int], decode: Iterable[int],
                    repeats: int) -> tuple[PartCost, PartCost]:
    m, nothing = runner.model, LayerRange(start=0, end=0)

    def embed(n: int, start: int) -> Callable[[], object]:
        ids = torch.randint(0, m.vocab_size, (n,))
        state = _prefilled(runner, nothing, start)

        def run() -> None:
            state.position = start  # every run embeds at the same positions
            runner.run(state, nothing, input_ids=ids)
        return run
    head_in = torch.randn(1, 1, m.hidden_size)
    head_ms = _median_ms(lambda: runner.logits(head_in), repeats)  # the head always runs on the last position only
    embed_cost = PartCost(prefill_ms={n: _median_ms(embed(n, 0), repeats) for n in prefill},
                          decode_ms={c: _median_ms(embed(1, c), repeats) for c in decode})
    head_cost = PartCost(prefill_ms=dict.fromkeys(prefill, head_ms), decode_ms=dict.fromkeys(decode, head_ms))
    return embed_cost, head_cost


def _nbytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _kv_bytes_per_token(m: LayeredModel, i: int) -> int:
    state = _prefilled(TorchRunner(m, batched=False), LayerRange(start=i, end=i + 1), 8)
    assert isinstance(state, TorchState)
    return state.kv.valid_nbytes // 8




def _codec_cost(raw: bytes, row: bytes, level: int, repeats: int) -> CodecCost:
    comp, decomp = Compressor(level), Decompressor()
    body, zipped = comp.compress(raw)
    mib = len(raw) / MIB
    encode_ms = _median_ms(lambda: comp.compress(raw), repeats)
    decode_ms = _median_ms(lambda: decomp.decompress(body, len(raw)), repeats) if zipped else 0.0
    return CodecCost(prefill_ratio=len(body) / len(raw), decode_ratio=len(comp.compress(row)[0]) / len(row),
                     encode_ms_per_mib=encode_ms / mib, decode_ms_per_mib=decode_ms / mib)


@torch.inference_mode()
def measure_codecs(m: LayeredModel, repeats: int, positions: int = 128) -> dict[str, dict[int, CodecCost]]:
    """Compression ratio and time of every codec and zstd level on the model's own mid-stack hidden states."""
    ids = torch.randint(0, m.vocab_size, (positions,), generator=torch.Generator().manual_seed(0))
    hidden = run_range(m, ShardState(m.new_cache()), LayerRange(start=0, end=max(1, m.num_layers // 2)),
                       input_ids=ids)[0]  # (positions, hidden)
    out: dict[str, dict[int, CodecCost]] = {}
    for name, dtype in DTYPE_BY_NAME.items():
        raw, row = quantise(hidden, dtype), quantise(hidden[-1:], dtype)
        out[name] = {}
        for level in ZSTD_LEVELS:
            out[name][level] = _codec_cost(raw, row, level, repeats)
    return out


def _onnx_runtime(runner: OrtRunner, prefill: list[int], decode: list[int], repeats: int,
                  progress: Callable[[Iterable[int]], Iterable[int]]) -> RuntimeCost:
    """The parts' latency on ONNX Runtime (one export per block), and the size of what that runtime loads."""
    m, exports, quantize = runner.model, runner.exports, runner.quantize
    embed_cost, head_cost = _embed_and_head(runner, prefill, decode, repeats)
    layers = [_block_cost(runner, i, prefill, decode, repeats) for i in progress(range(m.num_layers))]
    return RuntimeCost(
        embed=embed_cost, layers=layers, head=head_cost,
        embed_weights_bytes=exports.range(m, LayerRange(start=0, end=0), True, quantize).stat().st_size,
        layer_weights_bytes=[exports.range(m, LayerRange(start=i, end=i + 1), False, quantize).stat().st_size
                             for i in range(m.num_layers)],
        head_weights_bytes=exports.head(m, quantize).stat().st_size)


def measure_profile(loaded: LoadedModel, device_name: str, repeats: int = 5,
                    prefill: Iterable[int] = PREFILL_LENGTHS, decode: Iterable[int] = DECODE_CONTEXTS,
                    batch_sizes: Iterable[int] = BATCH_SIZES,
                    emulation: str = "", progress: Callable[[Iterable[int]], Iterable[int]] = lambda it: it,
                    backends: Iterable[BackendName] = BACKENDS, onnx_dir: Path | None = None,
                    quantize: bool = False) -> Profile:
    """Measure every part of `loaded` on this machine with the current torch thread count, on PyTorch and (unless
    `backends` leaves it out) on ONNX Runtime, with int8 weights when `quantize`.

    PyTorch parts are also timed in batched decode rounds of `batch_sizes` sessions (the tiers batch torch steps;
    ONNX Runtime steps run one at a time, so its parts have no batched figures)."""
    m = loaded.layered
    prefill = [n for n in prefill if n <= m.max_positions]
    decode = [c for c in decode if c < m.max_positions]
    # each session reads BATCH_CONTEXT positions, then one per round (and one warm-up round)
    fits = BATCH_CONTEXT + _batch_rounds(repeats) + 1 <= m.max_positions
    sizes = sorted(set(batch_sizes) | {1}) if fits else []
    runners = Runners(m, onnx_dir=onnx_dir, quantize=quantize)
    torch_runner = TorchRunner(m, batched=False)  # timed in this thread: a step's compute, not the hand-off
    embed_cost, head_cost = _embed_and_head(torch_runner, prefill, decode, repeats)
    embed_cost = embed_cost.model_copy(update={"decode_batch_ms": _embed_batch_ms(m, sizes, repeats)})
    head_cost = head_cost.model_copy(update={"decode_batch_ms": _head_batch_ms(m, sizes, repeats)})
    layers = [_block_cost(torch_runner, i, prefill, decode, repeats).model_copy(update={
        "decode_batch_ms": decode_batch_ms(m, LayerRange(start=i, end=i + 1), sizes, repeats)})
        for i in progress(range(m.num_layers))]
    runtimes = {}
    if "onnxruntime" in backends:
        ort = runners.get("onnxruntime")
        assert isinstance(ort, OrtRunner)
        runtimes["onnxruntime"] = _onnx_runtime(ort, prefill, decode, repeats, progress)
    embeddings = m.model.get_input_embeddings()
    tied = m.lm_head.weight is embeddings.weight  # type: ignore[union-attr]
    embed_bytes = sum(_nbytes(mod) for mod in m.model.modules() if isinstance(mod, torch.nn.Embedding))
    return Profile(
        device_name=device_name, model_name=loaded.name, fingerprint=loaded.fingerprint, model_type=m.model_type,
        num_layers=m.num_layers, hidden_size=m.hidden_size,
        machine=Machine(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                        logical_cores=os.cpu_count() or 1, threads=torch.get_num_threads(), emulation=emulation),
        versions={"python": sys.version.split()[0], "torch": torch.__version__,
                  "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__},
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        embed=embed_cost, layers=layers, head=head_cost,
        embed_weights_bytes=embed_bytes, layer_weights_bytes=[_nbytes(b) for b in m.blocks],
        head_weights_bytes=0 if tied else _nbytes(m.lm_head) + _nbytes(m.norm),
        kv_bytes_per_token=[_kv_bytes_per_token(m, i) for i in range(m.num_layers)],
        peak_activation_bytes_per_token=_peak_activation_bytes_per_token(m),
        codecs=measure_codecs(m, repeats), runtimes=runtimes,
    )


def _peak_activation_bytes_per_token(m: LayeredModel) -> int:
    """The MLP's widest intermediate (gate and up for Llama-family) plus the block's input and output, fp32."""
    config = m.config
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * m.hidden_size
    gated = 2 if m.model_type != "gpt2" else 1
    return 4 * (gated * inner + 2 * m.hidden_size)

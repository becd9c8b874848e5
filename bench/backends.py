"""ONNX Runtime against PyTorch per token, in the same run: one block, and a whole shard; prefill and decode.

Models: a GPT-2-small-shaped and a Llama-shaped model (124M / 125M parameters, random weights, which time like
trained ones), built in process. Runtimes: torch, onnxruntime (fp32) and onnxruntime with int8 weights (the
edge's optional quantisation). Each measurement alternates the runtimes round by round, so drift hits all alike;
times are medians and reported as ratios to torch.

- one block (the middle one): a prefill of `--prompt` positions (ms per token), and a decode step over a cache
  of `--prompt` positions;
- the whole shard (embeddings, every block, final norm and head): the prompt's prefill per token, and a decode
  step (one token in, logits out).

Parity (fp32 ONNX Runtime against torch): the largest absolute difference of the shard's hidden states over the
prefill and the decode steps, and whether `--greedy` greedy tokens are equal. Accuracy of int8 weights: on the
shipped model (trained; needs Debian's bible-kjv for its held-out text), held-out perplexity with the edge's
blocks and head on int8 ONNX Runtime, for the demo plan and edge-only, against the unsplit torch model.

Usage: python bench/backends.py [--threads 1] [--prompt 128] [--steps 24] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from edgesplit.tools.checkpoints import model_configs
from splitcore.backends import OrtRunner, Runner, TorchRunner
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.loading import LoadedModel, from_config, load_checkpoint
from splitcore.onnx_export import ExportCache
from splitcore.plan import Plan, parse_cut
from splitcore.ranges import LayerRange

ROOT = Path(__file__).resolve().parent.parent


def _ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def alternate(runs: dict[str, Callable[[], Callable[[], object]]], rounds: int, per_round: int = 1) -> dict:
    """Median ms of each run; `runs` gives a fresh closure per round (its set-up is not timed)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for make in runs.values():  # warm-up
        make()()
    for _ in range(rounds):
        for name, make in runs.items():
            fn = make()
            times[name] += [_ms(fn) for _ in range(per_round)]
    return {name: statistics.median(t) for name, t in times.items()}


def block_times(runners: dict[str, Runner], width: int, i: int, prompt: int, rounds: int) -> dict:
    block = LayerRange(start=i, end=i + 1)
    hidden, one = torch.randn(1, prompt, width), torch.randn(1, 1, width)

    def prefill(r: Runner) -> Callable[[], Callable[[], object]]:
        return lambda: (lambda: r.run(r.new_state(), block, hidden=hidden))

    def decode(r: Runner) -> Callable[[], Callable[[], object]]:
        def make() -> Callable[[], object]:
            state = r.new_state()
            r.run(state, block, hidden=hidden)
            return lambda: r.run(state, block, hidden=one)
        return make

    pre = alternate({n: prefill(r) for n, r in runners.items()}, rounds)
    dec = alternate({n: decode(r) for n, r in runners.items()}, rounds, per_round=8)
    return {n: {"prefill_ms_per_token": pre[n] / prompt, "decode_ms": dec[n]} for n in runners}


def shard_times(runners: dict[str, Runner], vocab: int, layers: int, prompt: int, rounds: int) -> dict:
    everything = LayerRange(start=0, end=layers)
    ids = torch.randint(0, vocab, (prompt,), generator=torch.Generator().manual_seed(0))

    def prefill(r: Runner) -> Callable[[], Callable[[], object]]:
        return lambda: (lambda: r.logits(r.run(r.new_state(), everything, input_ids=ids)))

    def decode(r: Runner) -> Callable[[], Callable[[], object]]:
        def make() -> Callable[[], object]:
            state = r.new_state()
            r.run(state, everything, input_ids=ids)
            return lambda: r.logits(r.run(state, everything, input_ids=ids[:1]))
        return make

    pre = alternate({n: prefill(r) for n, r in runners.items()}, rounds)
    dec = alternate({n: decode(r) for n, r in runners.items()}, rounds, per_round=8)
    return {n: {"prefill_ms_per_token": pre[n] / prompt, "decode_ms": dec[n]} for n in runners}


@torch.inference_mode()
def parity(torch_r: Runner, ort: Runner, vocab: int, layers: int, prompt: int, steps: int) -> dict:
    """Max |hidden difference| over a prefill and decode steps, and greedy tokens of both runtimes."""
    everything = LayerRange(start=0, end=layers)
    ids = torch.randint(0, vocab, (prompt,), generator=torch.Generator().manual_seed(1))
    states = {"torch": torch_r.new_state(), "ort": ort.new_state()}
    nxt = {"torch": ids, "ort": ids}
    tokens: dict[str, list[int]] = {"torch": [], "ort": []}
    worst = 0.0
    for _ in range(steps):
        hidden = {k: r.run(states[k], everything, input_ids=nxt[k]) for k, r in (("torch", torch_r), ("ort", ort))}
        if tokens["torch"] == tokens["ort"]:  # same inputs so far: the hidden states are comparable
            worst = max(worst, float((hidden["torch"] - hidden["ort"]).abs().max()))
        for k, r in (("torch", torch_r), ("ort", ort)):
            tokens[k].append(int(r.logits(hidden[k]).argmax()))
            nxt[k] = torch.tensor(tokens[k][-1:])
    same = sum(a == b for a, b in zip(tokens["torch"], tokens["ort"], strict=True))
    return {"max_abs_diff": worst, "greedy_equal": tokens["torch"] == tokens["ort"], "greedy_agreement": same / steps}


def runners_for(loaded: LoadedModel, onnx_dir: Path) -> dict[str, Runner]:
    m, exports = loaded.layered, ExportCache(onnx_dir)
    return {"torch": TorchRunner(m), "onnxruntime": OrtRunner(m, exports),
            "onnxruntime-int8": OrtRunner(m, exports, quantize=True)}


def bench_model(name: str, args: argparse.Namespace, onnx_dir: Path) -> dict:
    loaded = from_config(model_configs()[name], seed=0, name=name)
    m = loaded.layered
    runners = runners_for(loaded, onnx_dir)
    started = time.perf_counter()
    for r in runners.values():  # export (and quantise) once, outside the timings
        r.prepare(LayerRange(start=0, end=m.num_layers), embed=True)
        r.prepare(LayerRange(start=m.num_layers // 2, end=m.num_layers // 2 + 1), embed=False)
    export_s = time.perf_counter() - started
    print(f"{name}: exports and quantisation took {export_s:.1f} s (once; cached on disk)", flush=True)
    out = {"export_s": export_s,
           "block": block_times(runners, m.hidden_size, m.num_layers // 2, args.prompt, args.rounds),
           "shard": shard_times(runners, m.vocab_size, m.num_layers, args.prompt, args.rounds),
           "parity": parity(runners["torch"], runners["onnxruntime"], m.vocab_size, m.num_layers, args.prompt,
                            args.steps)}
    return out


def _heldout(loaded: LoadedModel, windows: int, block: int = 128) -> list[torch.Tensor]:
    from edgesplit.tools.corpus import encode_stream, read_corpus, split_corpus

    data = encode_stream(loaded.tokenizer, split_corpus(read_corpus())[1])
    return [data[i:i + block + 1] for i in range(0, len(data) - 2, block)][:windows]


@torch.inference_mode()
def _split_nll(loaded: LoadedModel, edge: Runner, plan: Plan, window: torch.Tensor) -> float:
    """Teacher-forced NLL (sum) with the edge's blocks and head on `edge`, the cloud's on torch (fp32 wire)."""
    m, cloud = loaded.layered, TorchRunner(loaded.layered)
    ids = window[:-1]
    if plan.uses_cloud:
        hidden = edge.run(edge.new_state(), plan.edge_front, input_ids=ids)
        hidden = cloud.run(cloud.new_state(), plan.cloud_layers, hidden=hidden)
        hidden = edge.run(edge.new_state(), plan.edge_back, hidden=hidden)
    else:
        hidden = edge.run(edge.new_state(), LayerRange(start=0, end=m.num_layers), input_ids=ids)
    logits = torch.cat([edge.logits(hidden[:, j:j + 1]) for j in range(hidden.shape[1])])  # (seq, vocab)
    return float(torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum"))


def int8_accuracy(args: argparse.Namespace, onnx_dir: Path) -> dict:
    loaded = load_checkpoint(DEFAULT_MODEL_DIR)
    runners = runners_for(loaded, onnx_dir)
    windows = _heldout(loaded, args.windows)
    n = loaded.layered.num_layers
    out: dict = {"model": loaded.name, "windows": len(windows), "tokens": sum(len(w) - 1 for w in windows)}
    for label, plan in (("split 2:6", parse_cut("2:6", n, codec="fp32")), ("edge-only", parse_cut("edge", n))):
        for runtime in ("torch", "onnxruntime", "onnxruntime-int8"):
            nll = sum(_split_nll(loaded, runners[runtime], plan, w) for w in windows)
            out[f"{label} {runtime}"] = math.exp(nll / out["tokens"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=24, help="greedy tokens compared for parity")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--windows", type=int, default=100, help="held-out windows of 128 tokens for int8 accuracy")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "backends.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"threads": args.threads, "prompt": args.prompt, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in model_configs():
            results["models"][name] = bench_model(name, args, Path(tmp))
            report(name, results["models"][name])
        results["int8_accuracy"] = int8_accuracy(args, Path(tmp))
    print("held-out perplexity, shipped model:", json.dumps(results["int8_accuracy"], indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")


def report(name: str, r: dict) -> None:
    print(f"\n{name} ({r['parity']}):")
    print(f"{'part':6} {'phase':22} {'torch ms':>9} {'ort/torch':>10} {'ort-int8/torch':>15}")
    for part in ("block", "shard"):
        for key, label in (("prefill_ms_per_token", "prefill, per token"), ("decode_ms", "decode step")):
            base = r[part]["torch"][key]
            print(f"{part:6} {label:22} {base:9.3f} {r[part]['onnxruntime'][key] / base:10.3f} "
                  f"{r[part]['onnxruntime-int8'][key] / base:15.3f}")


if __name__ == "__main__":
    main()

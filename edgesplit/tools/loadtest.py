"""`edgesplit loadtest` and `loadtest/run.py`: stages of load against an edge, a JSON report and plots.

    edgesplit loadtest --url http://127.0.0.1:8000 --cloud-url http://127.0.0.1:8001 --concurrency 32 --duration-s 60
    edgesplit loadtest --spawn --cut 2:6 --concurrency 1 4 16 32 --duration-s 20     # starts both tiers itself
    edgesplit loadtest --spawn --cut cloud --concurrency 1 4 16 32                    # the cloud's throughput
    edgesplit loadtest --spawn --mode open --rate 2 8 --duration-s 30                 # Poisson arrivals

A stage runs per concurrency (closed loop) or per rate (open loop). `--same-prompt` sends one prompt in every
request; with `--reference` (the model's directory) each output is also compared with the unsplit model's
greedy output, generated here with `transformers`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from edgesplit.procs import free_port, serve, wait_healthy
from edgesplit.tools.loadgen import MemorySampler, Stage, prompt_ids, run_stage, summarise
from edgesplit.tools.reports import write_report
from splitcore.defaults import DEFAULT_MODEL_DIR


def reference_text(model_dir: Path, prompt: list[int], tokens: int) -> str:
    """The unsplit model's greedy continuation of `prompt`, decoded as the edge decodes it."""
    from splitcore.loading import load_checkpoint
    from splitcore.testing import reference_text as unsplit_text

    return unsplit_text(load_checkpoint(model_dir), prompt, tokens)


async def run_all(args: argparse.Namespace, edge: str, cloud: str | None) -> dict:
    urls = {"edge": edge, **({"cloud": cloud} if cloud else {})}
    sampler = MemorySampler(urls, every_s=args.memory_every_s)
    prompts = [prompt_ids(args.prompt_tokens, args.seed)] if args.same_prompt else None
    expected = reference_text(args.reference, prompts[0], args.output_tokens) if args.reference and prompts else None
    t0 = time.perf_counter()
    sampler.start(t0)
    stages = []
    loads = args.concurrency if args.mode == "closed" else args.rate
    for load in loads:
        stage = Stage(mode=args.mode, concurrency=int(load) if args.mode == "closed" else args.max_concurrency,
                      rate=float(load) if args.mode == "open" else 0.0, arrivals=args.arrivals,
                      duration_s=args.duration_s,
                      max_requests=args.max_requests, prompt_tokens=args.prompt_tokens,
                      output_tokens=args.output_tokens)
        started = time.perf_counter() - t0
        sent, wall = await run_stage(edge, stage, seed=args.seed, timeout_s=args.timeout_s, prompts=prompts)
        row = {"stage": stage.__dict__, "started_s": started, **summarise(sent, wall),
               "requests": [{"started_s": started + r.started, "ttft_s": (r.first - r.started) if r.first else None,
                             "e2e_s": (r.ended - r.started) if r.ended else None, "tokens": r.tokens,
                             "error": r.error} for r in sent]}
        if expected is not None:
            row["mismatched_outputs"] = sum(1 for r in sent if r.error is None and r.text != expected)
        print(_line(row), flush=True)
        stages.append(row)
    await sampler.stop()
    return {"edge": edge, "cloud": cloud, "mode": args.mode, "stages": stages, "memory": sampler.samples,
            "memory_summary": sampler.summary()}


def _line(row: dict) -> str:
    s = row["stage"]
    load = f"{s['concurrency']} clients" if s["mode"] == "closed" else f"{s['rate']:g} req/s"

    def p(key: str) -> str:
        v = row[key]
        return "-" if v["p50"] is None else f"{v['p50']:.0f}/{v['p90']:.0f}/{v['p99']:.0f}"
    extra = f", mismatched {row['mismatched_outputs']}" if "mismatched_outputs" in row else ""
    return (f"{load}: {row['completed']} done, {row['failed']} failed {row['errors'] or ''}, "
            f"{row['requests_per_s']:.2f} req/s, {row['output_tokens_per_s']:.1f} tok/s; p50/p90/p99 ms: "
            f"ttft {p('ttft_ms')}, tpot {p('tpot_ms')}, itl {p('itl_ms')}, e2e {p('e2e_ms')}{extra}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgesplit loadtest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="the edge's base URL (omit with --spawn)")
    ap.add_argument("--cloud-url", help="the cloud's base URL, for its memory (optional)")
    ap.add_argument("--spawn", action="store_true", help="start a cloud and an edge on loopback for the run")
    ap.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL_DIR), help="--spawn: the checkpoint")
    ap.add_argument("--speculate", default="off", help="--spawn: the edge's --speculate (off: plain decode steps, "
                    "which the cloud batches; bench/speculation.py measures speculation)")
    ap.add_argument("--cut", default="2:6", help="--spawn: the edge's plan ('cloud': the cloud does all the work)")
    ap.add_argument("--head", choices=["edge", "cloud"], default="edge", help="--spawn: where the head runs")
    ap.add_argument("--mode", choices=["closed", "open"], default="closed")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8], help="closed loop: clients, one stage each")
    ap.add_argument("--rate", type=float, nargs="+", default=[2.0], help="open loop: requests/s, one stage each")
    ap.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson", help="open loop: spacing")
    ap.add_argument("--max-concurrency", type=int, default=0, help="open loop: cap on requests in flight (0: none)")
    ap.add_argument("--duration-s", type=float, default=30.0, help="each stage sends for this long")
    ap.add_argument("--max-requests", type=int, default=100_000, help="and at most this many requests")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--same-prompt", action="store_true", help="every request the same (greedy: same output)")
    ap.add_argument("--reference", type=Path, help="with --same-prompt: compare outputs with this unsplit model")
    ap.add_argument("--timeout-s", type=float, default=120.0)
    ap.add_argument("--memory-every-s", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("loadtest/results/loadtest.json"))
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.spawn and not args.url:
        sys.exit("edgesplit loadtest: give --url of an edge, or --spawn")
    if args.reference and not args.same_prompt:
        sys.exit("edgesplit loadtest: --reference compares outputs of one prompt; add --same-prompt")
    with ExitStack() as stack:
        edge, cloud = args.url, args.cloud_url
        if args.spawn:
            logs = Path(tempfile.mkdtemp(prefix="edgesplit-loadtest-"))
            cloud_port, edge_port = free_port(), free_port()
            cloud = f"http://127.0.0.1:{cloud_port}"
            # one edge holds a cloud session per client, and a finished one is ended just after the next opens
            sessions = str(2 * max([*args.concurrency, args.max_concurrency, 1]))
            cloud_args = ["--model", str(args.model), "--max-sessions-per-caller", sessions]
            proc = stack.enter_context(serve("cloud", cloud_args, cloud_port, logs / "cloud.log"))
            wait_healthy(f"{cloud}/health", proc)
            edge = f"http://127.0.0.1:{edge_port}"
            tokens_leave = args.cut.startswith(("cloud", "0")) or args.head == "cloud"
            edge_args = ["--model", str(args.model), "--cloud", cloud, "--cut", args.cut, "--head", args.head,
                         "--codec", "int8", "--max-concurrent-requests", "64", "--speculate", args.speculate,
                         *(["--allow-tokens-off-device"] if tokens_leave else [])]
            proc = stack.enter_context(serve("edge", edge_args, edge_port, logs / "edge.log"))
            wait_healthy(f"{edge}/health", proc)
            print(f"spawned cloud {cloud} and edge {edge} (cut {args.cut}); logs in {logs}", flush=True)
        report = asyncio.run(run_all(args, edge, cloud))
    write_report(args, report)
    print(f"memory (MiB): {json.dumps(report['memory_summary'])}")
    from edgesplit.tools.loadplot import plot  # matplotlib only when writing the report

    print(f"report: {args.out}; plot: {plot(report, args.out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()

"""The cloud on Ray Serve against a direct cloud, in one run on loopback: what routing costs per decode step,
what a second replica gives, and how long a killed replica's sessions wait for their next token.

    python bench/scaleout.py                                 # all three parts, the shipped model
    python bench/scaleout.py --parts overhead --repeats 9

1. **overhead**: a direct cloud (`serve cloud`) and a one-replica Ray cloud (`serve cloud --ray`), each on one
   thread, and split edges (2:6 int8, greedy, no speculation) to each over both transports; the same request
   goes to each edge in turn (as `bench/step_overhead.py`). Ray's cost per step is its split's decode time per
   token minus the direct split's over the same transport (a channel or HTTP to the session's replica after the
   first frame), paired per round and the median taken; and the probe round
   trips (the transport floor) of the direct cloud, of Ray's proxy (a session's first frame) and of the
   replica's own listener (its other frames, `cloud_service.direct`).
2. **throughput**: Ray clouds of 1 and 2 replicas (one CPU and one thread each), driven by emulated edges
   (`edgesplit.tools.batchbench`: cloud-only, closed loop, each stream its own session and connection) at 1, 8
   and 32 streams. On this 2-core machine the driver, Ray's proxy and the replicas share the two cores, so 2
   replicas can show whether sessions spread and batch per replica, not a cluster's scaling.
3. **recovery**: a 2-replica Ray cloud, a real edge, streams of greedy tokens; the replica holding the most
   sessions is killed (SIGKILL); per replayed stream, the time from the kill to its next token, against the
   streams' own median gap between tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from edgesplit.procs import free_port, replica_healths, serve, wait_healthy
from edgesplit.sse import data_events
from edgesplit.tools.batchbench import monolithic, plans, run_level
from edgesplit.tools.checkpoints import model_dir
from edgesplit.tools.reports import write_report
from edgesplit.tools.stepbench import decode_ms_per_token, probe_floor_ms
from splitcore.loading import load_checkpoint
from splitcore.replicas import REPLICA_URL_HEADER
from splitcore.wire import HEADER_BYTES

CUT = "2:6"


@contextlib.contextmanager
def ray_cloud(path: Path, replicas: int, work: Path, label: str) -> Iterator[str]:
    """A Ray cloud of `replicas` (one CPU, one thread each) on a one-node cluster of its own; its URL once every
    replica answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--ray", "--replicas", str(replicas), "--replica-cpus", "1", "--threads", "1", "--model", str(path),
            "--max-sessions-per-caller", "1024"]
    with serve("cloud", args, port, work / f"{label}.log") as proc:
        wait_healthy(f"{url}/health", proc, timeout_s=240)
        replica_healths(url, replicas)
        yield url


def overhead(path: Path, args: argparse.Namespace, work: Path) -> dict:
    prompt = list(range(10, 10 + args.prompt_tokens))
    frame_bytes = load_checkpoint(path).layered.hidden_size + HEADER_BYTES
    common = ["--model", str(path), "--threads", "1"]
    split = ["--cut", CUT, "--codec", "int8", "--speculate", "off", *common]
    direct_port = free_port()
    direct = f"http://127.0.0.1:{direct_port}"
    with contextlib.ExitStack() as stack:
        proc = stack.enter_context(serve("cloud", common, direct_port, work / "direct-cloud.log"))
        wait_healthy(f"{direct}/health", proc)
        ray = stack.enter_context(ray_cloud(path, 1, work, "ray-cloud-1"))
        edges = {"edge-only": ["--cut", "edge", *common],
                 "direct, channel": ["--cloud", direct, "--cloud-transport", "websocket", *split],
                 "direct, http": ["--cloud", direct, "--cloud-transport", "http", *split],
                 "ray, channel": ["--cloud", ray, "--cloud-transport", "websocket", *split],
                 "ray, http": ["--cloud", ray, "--cloud-transport", "http", *split]}
        urls = {}
        for label, flags in edges.items():
            port = free_port()
            p = stack.enter_context(serve("edge", flags, port, work / f"edge-{label.replace(', ', '-')}.log"))
            urls[label] = f"http://127.0.0.1:{port}"
            wait_healthy(f"{urls[label]}/health", p)
        own = httpx.get(f"{ray}/health").headers[REPLICA_URL_HEADER]  # the replica's own listener
        samples: dict[str, list[float]] = {k: [] for k in [*edges, "floor direct", "floor ray proxy",
                                                           "floor ray replica"]}
        with httpx.Client(timeout=300) as client:
            for url in urls.values():
                decode_ms_per_token(client, url, prompt, args.tokens)  # warm-up
            for _ in range(args.repeats):
                for label, url in urls.items():
                    samples[label].append(decode_ms_per_token(client, url, prompt, args.tokens))
                samples["floor direct"].append(probe_floor_ms(client, direct, frame_bytes, args.probe_rounds))
                samples["floor ray proxy"].append(probe_floor_ms(client, ray, frame_bytes, args.probe_rounds))
                samples["floor ray replica"].append(probe_floor_ms(client, own, frame_bytes, args.probe_rounds))

    def paired(a: str, b: str) -> float:
        return statistics.median(x - y for x, y in zip(samples[a], samples[b], strict=True))
    med = {k: statistics.median(v) for k, v in samples.items()}
    row = {"ms_per_token": med, "ray_over_direct_http_ms": paired("ray, http", "direct, http"),
           "ray_over_direct_channel_ms": paired("ray, channel", "direct, channel"),
           "ray_http_over_direct_channel_ms": paired("ray, http", "direct, channel"),
           "ray_x_direct_channel": med["direct, channel"] / med["ray, channel"],
           "ray_x_direct_http": med["direct, http"] / med["ray, http"],
           "ray_over_edge_only_ms": paired("ray, channel", "edge-only"),
           "direct_http_over_edge_only_ms": paired("direct, http", "edge-only"),
           "floor_ray_proxy_over_direct_ms": med["floor ray proxy"] - med["floor direct"],
           "floor_ray_replica_over_direct_ms": med["floor ray replica"] - med["floor direct"], "samples": samples}
    print(f"overhead (shipped model, {CUT} int8, {args.tokens} tokens, median of {args.repeats}): decode ms/token "
          + ", ".join(f"{k} {v:.2f}" for k, v in med.items()), flush=True)
    print(f"  Ray routing adds {row['ray_over_direct_channel_ms']:.2f} ms per step over the direct cloud on the "
          f"channel ({row['ray_x_direct_channel']:.2f}x its tokens/s), {row['ray_over_direct_http_ms']:.2f} ms on "
          f"HTTP ({row['ray_x_direct_http']:.2f}x); probe floor {med['floor direct']:.2f} ms direct, "
          f"{med['floor ray proxy']:.2f} ms through Ray's proxy, {med['floor ray replica']:.2f} ms at the replica's "
          "own listener", flush=True)
    return row


def throughput(path: Path, args: argparse.Namespace, work: Path) -> dict:
    loaded = load_checkpoint(path)
    plan = plans(loaded)[0]  # cloud-only: the cloud does all the compute, so replicas are what is measured
    limit = {b: monolithic(loaded, b, args.prompt_tokens, args.output_tokens) for b in args.streams}
    result: dict = {"monolithic_tokens_per_s": limit, "replicas": {}}
    print("throughput, cloud-only: monolithic generate tok/s by batch: "
          + ", ".join(f"{b}: {v:.0f}" for b, v in limit.items()), flush=True)
    for replicas in args.replicas:
        with ray_cloud(path, replicas, work, f"ray-cloud-{replicas}") as url:
            rows = []
            for streams in args.streams:
                row = asyncio.run(run_level(url, plan, loaded, streams, args.prompt_tokens, args.output_tokens,
                                            args.duration_s, counters=False))
                row = {k: row[k] for k in ("streams", "output_tokens_per_s", "failed", "generations", "ttft_ms",
                                           "tpot_ms")}
                rows.append(row)
                print(f"  {replicas} replica(s), {streams} streams: {row['output_tokens_per_s']:.0f} tok/s, ttft p50 "
                      f"{row['ttft_ms']['p50']} ms, tpot p50 {row['tpot_ms']['p50']} ms, failed {row['failed']}",
                      flush=True)
            result["replicas"][str(replicas)] = rows
    return result


def _stream(url: str, prompt: str, tokens: int) -> dict:
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    out: dict = {"times": [], "edgesplit": None}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
        for event in data_events(r.iter_lines()):
            if event is None:
                continue
            if event.get("choices") and event["choices"][0]["text"]:
                out["times"].append(time.monotonic())
            elif "edgesplit" in event:
                out["edgesplit"] = event["edgesplit"]
    return out


def recovery(path: Path, args: argparse.Namespace, work: Path) -> dict:
    edge_args = ["--model", str(path), "--cut", CUT, "--codec", "int8", "--speculate", "off", "--threads", "1"]
    with ray_cloud(path, 2, work, "ray-cloud-recovery") as cloud:
        pids = {name: h["pid"] for name, h in replica_healths(cloud, 2).items()}
        port = free_port()
        edge = f"http://127.0.0.1:{port}"
        with serve("edge", [*edge_args, "--cloud", cloud], port, work / "edge-recovery.log") as proc:
            wait_healthy(f"{edge}/health", proc)
            with concurrent.futures.ThreadPoolExecutor(args.recovery_streams) as pool:
                runs = [pool.submit(_stream, edge, f"Stream {i} begins:", args.recovery_tokens)
                        for i in range(args.recovery_streams)]
                time.sleep(args.kill_after_s)
                took = _replica_sessions(edge)
                victim = max(took, key=lambda r: took[r])
                killed_at = time.monotonic()
                os.kill(pids[victim], signal.SIGKILL)
                outs = [r.result() for r in runs]
    replayed = [o for o in outs if o["edgesplit"] and o["edgesplit"]["replays"]]
    waits = [_stall_after(o["times"], killed_at) for o in replayed]
    gaps = [b - a for o in outs for a, b in zip(o["times"], o["times"][1:], strict=False)]
    row: dict = {"streams": len(outs), "sessions_per_replica": took, "replayed_streams": len(replayed),
                 "fallbacks": sum(1 for o in outs if o["edgesplit"] and o["edgesplit"]["fallback"]),
                 "kill_to_next_token_ms": [w * 1000 for w in waits],  # per replayed stream
                 "median_gap_between_tokens_ms": statistics.median(gaps) * 1000 if gaps else None}
    print(f"recovery: {row['replayed_streams']} of {row['streams']} streams replayed, {row['fallbacks']} fell back; "
          f"kill to the replayed session's first token {', '.join(f'{w:.0f}' for w in row['kill_to_next_token_ms'])} "
          f"ms (streams' median gap "
          f"{row['median_gap_between_tokens_ms']:.0f} ms)", flush=True)
    return row


def _stall_after(times: list[float], killed_at: float, within_s: float = 5.0) -> float:
    """The longest wait for a token in the `within_s` after the kill, counted from the kill at the earliest: for a
    replayed stream, the time from the replica's death to the first token of the rebuilt session (a token already
    on its way when the replica died may come first)."""
    pairs = zip(times, times[1:], strict=False)
    waits = [b - max(a, killed_at) for a, b in pairs if killed_at < b < killed_at + within_s]
    return max(waits, default=float("nan"))


def _replica_sessions(edge: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    took: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{edge}/metrics").text):
        for s in family.samples:
            if s.name == "edgesplit_edge_cloud_replica_sessions_total":
                took[s.labels["replica"]] = s.value
    return took


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["overhead", "throughput", "recovery"],
                    choices=["overhead", "throughput", "recovery"])
    ap.add_argument("--tokens", type=int, default=128, help="overhead: greedy tokens per request")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7, help="overhead: alternating requests per configuration")
    ap.add_argument("--probe-rounds", type=int, default=40)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--output-tokens", type=int, default=32, help="throughput: tokens per generation")
    ap.add_argument("--duration-s", type=float, default=15.0, help="throughput: seconds per level")
    ap.add_argument("--recovery-streams", type=int, default=8)
    ap.add_argument("--recovery-tokens", type=int, default=200)
    ap.add_argument("--kill-after-s", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/scaleout.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edgesplit-scaleout-"))
    path = model_dir("default", work)
    parts = {"overhead": overhead, "throughput": throughput, "recovery": recovery}
    report = {name: parts[name](path, args, work) for name in args.parts}
    write_report(args, report)
    print(f"report: {args.out} (logs in {work})")


if __name__ == "__main__":
    main()

"""Where one split decode step goes: timers around the frame path's functions in both real processes.

Starts a cloud and a split edge on loopback, each with timers wrapped around the functions a decode step passes
through (frame encode and decode, the blocks, the channel or HTTP exchange, the cloud's round), sends greedy
requests, stops both and prints each function's median per call. Prefill calls are among them, one per request
against 127 decode calls, so the medians are the decode steps'.

    python bench/step_trace.py [--cut 2:6] [--requests 6] [--threads 1] [--transport websocket]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from edgesplit.procs import free_port, wait_healthy
from splitcore.defaults import DEFAULT_MODEL_DIR

TIMINGS: dict[str, list[float]] = collections.defaultdict(list)


def _wrap(owner: Any, name: str) -> None:
    """Time every call of `owner.name` (sync or async) into TIMINGS."""
    f, label = getattr(owner, name), f"{owner.__name__}.{name}"
    if f.__code__.co_flags & 0x80:  # a coroutine function
        @functools.wraps(f)
        async def timed_async(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return await f(*a, **k)
            finally:
                TIMINGS[label].append((time.perf_counter() - t) * 1000)
        setattr(owner, name, timed_async)
    else:
        @functools.wraps(f)
        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                TIMINGS[label].append((time.perf_counter() - t) * 1000)
        setattr(owner, name, timed)


def _serve(tier: str, out: str, argv: list[str]) -> None:
    """Run `edgesplit serve tier argv` with the timers in; write the medians to `out` on SIGTERM."""
    from splitcore import batching, wire
    if tier == "edge":
        from edge_service import channel_client, cloud_client, orchestrator
        from splitcore import backends, sampling
        wrapped = [(orchestrator.Orchestrator, "_step"), (orchestrator.Orchestrator, "_cross"),
                   (cloud_client.CloudClient, "forward"), (channel_client.FrameChannel, "exchange"),
                   (backends.TorchRunner, "run"), (backends.TorchRunner, "run_head"), (sampling.Sampler, "__call__")]
    else:
        from cloud_service import channel, engine
        wrapped = [(channel.FrameService, "answer"), (engine.ShardEngine, "forward_async"),
                   (engine.ShardEngine, "_answer"), (batching.Batcher, "run_round")]
    for owner, name in [*wrapped, (wire.FrameCodec, "encode"), (wire.FrameCodec, "decode"),
                        (batching.Batcher, "_compute")]:
        _wrap(owner, name)

    def dump(*_: Any) -> None:
        Path(out).write_text(json.dumps({k: [len(v), statistics.median(v)] for k, v in TIMINGS.items() if v}))
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)
    from edgesplit.cli import main
    main(["serve", tier, *argv])


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:  # a tier this script started
        return _serve(sys.argv[2], sys.argv[3], sys.argv[4:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--cut", default="2:6")
    ap.add_argument("--requests", type=int, default=6, help="greedy requests of 128 tokens")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each tier")
    ap.add_argument("--transport", default="websocket", choices=["websocket", "http"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesplit-trace-"))
    cloud_port, edge_port = free_port(), free_port()
    common = ["--model", str(args.model), "--threads", str(args.threads)]
    tiers = {"cloud": [*common, "--port", str(cloud_port)],
             "edge": [*common, "--port", str(edge_port), "--cloud", f"http://127.0.0.1:{cloud_port}", "--cut",
                      args.cut, "--codec", "int8", "--cloud-transport", args.transport, "--speculate", "off"]}
    procs = {tier: subprocess.Popen([sys.executable, __file__, "--serve", tier, str(work / f"{tier}.json"), *flags],
                                    stdout=open(work / f"{tier}.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
             for tier, flags in tiers.items()}
    try:
        for tier, port in (("cloud", cloud_port), ("edge", edge_port)):
            wait_healthy(f"http://127.0.0.1:{port}/health", procs[tier])
        with httpx.Client(timeout=300) as client:
            for _ in range(args.requests):
                client.post(f"http://127.0.0.1:{edge_port}/v1/completions",
                            json={"prompt": list(range(10, 26)), "max_tokens": 128, "temperature": 0}
                            ).raise_for_status()
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
    for tier in ("edge", "cloud"):
        print(f"{tier} ({args.cut}, int8, {args.transport}, {args.threads} thread(s)): median ms per call")
        for label, (calls, ms) in json.loads((work / f"{tier}.json").read_text()).items():
            print(f"  {label:32s} {ms:7.3f}  ({calls} calls)")


if __name__ == "__main__":
    main()

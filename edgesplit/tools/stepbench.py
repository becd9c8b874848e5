"""What a split decode step costs over edge-only, against the transport's own floor, measured in one run.

For each model, one cloud and its edges run as real processes on loopback: an edge-only edge and, per transport
(`--transports`), a split edge (`--cut`, int8). The same greedy request goes to each in turn, `--repeats` times;
each answer's own figures (`time_to_first_token_ms`, `total_ms`) give its decode time per token, so prompt
reading is left out. A split's overhead per step is its decode time per token minus edge-only's: both run the
same blocks and head, the split only adds one exchange with the cloud per token. Each transport's floor is
measured between the runs: HTTP's, the median round trip of `POST /v1/probe` with a decode frame's size; the
frame channel's, that of a message the cloud answers without compute. Monolithic `transformers` generation of
the same checkpoint in this process gives the third baseline.

    python bench/step_overhead.py                      # the shipped model (2:6) and the 124M model (6:12)
    python bench/step_overhead.py --models default --transports websocket --repeats 9
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch

from edge_service.channel_client import FrameChannel
from edgesplit.procs import free_port, serve, wait_healthy
from edgesplit.tools.checkpoints import model_dir
from edgesplit.tools.reports import write_report
from splitcore.loading import load_checkpoint
from splitcore.wire import HEADER_BYTES

CUTS = {"default": "2:6", "gpt2-small-shaped": "6:12"}


def monolithic_ms_per_token(path: Path, prompt: list[int], tokens: int, repeats: int) -> float:
    """Decode time per token of `model.generate`: (time for `tokens` - time for 1) / (tokens - 1), medians."""
    model = load_checkpoint(path).layered.model
    ids = torch.tensor([prompt])

    def timed(n: int) -> float:
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - started

    timed(tokens)  # warm-up
    long = statistics.median(timed(tokens) for _ in range(repeats))
    short = statistics.median(timed(1) for _ in range(repeats))
    return (long - short) * 1000 / (tokens - 1)


def decode_ms_per_token(client: httpx.Client, url: str, prompt: list[int], tokens: int) -> float:
    """One greedy completion; its decode time per token from the edge's own figures."""
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0}
    response = client.post(f"{url}/v1/completions", json=body)
    response.raise_for_status()
    out = response.json()
    n = out["usage"]["completion_tokens"]
    assert n >= 8, f"the model stopped after {n} tokens; pick another prompt"  # greedy: the same on every run
    info = out["edgesplit"]
    return (info["total_ms"] - info["time_to_first_token_ms"]) / (n - 1)


def probe_floor_ms(client: httpx.Client, url: str, nbytes: int, rounds: int) -> float:
    """Median round trip of one POST of `nbytes` to the cloud's probe endpoint: HTTP's floor."""
    body = b"\0" * nbytes
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        client.post(f"{url}/v1/probe", content=body).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def channel_floor_ms(channel: FrameChannel, nbytes: int, rounds: int) -> float:
    """Median round trip of a message of `nbytes` on the frame channel that the cloud answers without any
    compute (too short for a frame header: a tagged refusal comes back): the channel's floor."""
    body = b"\0" * min(nbytes, HEADER_BYTES - 1)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        answer, refusal = channel.exchange(body, 10.0)
        times.append((time.perf_counter() - started) * 1000)
        assert answer is None and refusal is not None and refusal[0] == 400, refusal
    return statistics.median(times)


def bench_model(name: str, path: Path, cut: str, args: argparse.Namespace, work: Path) -> dict:
    loaded = load_checkpoint(path)
    prompt = list(range(10, 10 + args.prompt_tokens))
    mono = monolithic_ms_per_token(path, prompt, args.tokens, args.repeats)
    frame_bytes = loaded.layered.hidden_size + HEADER_BYTES  # an int8 decode frame: one row and the header
    common = ["--model", str(path), *(["--threads", str(args.threads)] if args.threads else [])]
    cloud_port = free_port()
    cloud = f"http://127.0.0.1:{cloud_port}"
    edges = {"edge-only": ["--cut", "edge"]}
    for transport in args.transports:
        edges[f"split over {transport}"] = ["--cloud", cloud, "--cut", cut, "--codec", "int8", "--cloud-transport",
                                            transport, "--speculate", "off", *args.edge_args]
    samples: dict[str, list[float]] = {k: [] for k in [*edges, "floor http", "floor websocket"]}
    with contextlib.ExitStack() as stack:
        pins = ({1}, {0}) if args.pin else (None, None)  # (cloud, edges): a core each, as two machines would have
        cloud_proc = stack.enter_context(serve("cloud", common, cloud_port, work / f"{name}-cloud.log", cpus=pins[0]))
        urls = {}
        for label, flags in edges.items():
            port = free_port()
            proc = stack.enter_context(serve("edge", [*common, *flags], port, work / f"{name}-{label}.log",
                                             cpus=pins[1]))
            urls[label] = (f"http://127.0.0.1:{port}", proc)
        wait_healthy(f"{cloud}/health", cloud_proc)
        for url, proc in urls.values():
            wait_healthy(f"{url}/health", proc)
        channel = FrameChannel(cloud, {}, None, 3.0)
        with httpx.Client(timeout=300, limits=httpx.Limits(max_keepalive_connections=4)) as client:
            for url, _ in urls.values():  # warm-up: first requests pay one-time costs
                decode_ms_per_token(client, url, prompt, args.tokens)
            probe_floor_ms(client, cloud, frame_bytes, 50)
            channel_floor_ms(channel, frame_bytes, 50)
            for _ in range(args.repeats):  # alternating, so drift in the machine's speed hits all alike
                for label, (url, _) in urls.items():
                    samples[label].append(decode_ms_per_token(client, url, prompt, args.tokens))
                samples["floor http"].append(probe_floor_ms(client, cloud, frame_bytes, args.probe_rounds))
                samples["floor websocket"].append(channel_floor_ms(channel, frame_bytes, args.probe_rounds))
        channel.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    row: dict = {"model": name, "cut": cut, "codec": "int8", "tokens": args.tokens, "threads": args.threads,
                 "pinned": args.pin,
                 "monolithic_ms_per_token": mono, "edge_only_ms_per_token": med["edge-only"], "transports": {},
                 "samples": samples}
    print(f"{name} (split {cut}, int8, {args.tokens} tokens, median of {args.repeats}): decode ms/token "
          f"monolithic {mono:.2f}, edge-only {med['edge-only']:.2f}", flush=True)
    for transport in args.transports:
        label = f"split over {transport}"
        overheads = [s - e for s, e in zip(samples[label], samples["edge-only"], strict=True)]
        t = {"split_ms_per_token": med[label], "overhead_ms_per_step": statistics.median(overheads),
             "transport_floor_ms": med[f"floor {transport}"], "split_x_edge_only": med["edge-only"] / med[label],
             "split_x_monolithic": mono / med[label]}
        t["overhead_over_floor_ms"] = t["overhead_ms_per_step"] - t["transport_floor_ms"]
        row["transports"][transport] = t
        print(f"  {label}: {t['split_ms_per_token']:.2f} ms/token, overhead {t['overhead_ms_per_step']:.2f} ms/step "
              f"over edge-only (floor {t['transport_floor_ms']:.2f} ms); {t['split_x_edge_only']:.2f}x edge-only, "
              f"{t['split_x_monolithic']:.2f}x monolithic", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(CUTS), help="'default' and/or gpt2-small-shaped")
    ap.add_argument("--tokens", type=int, default=128, help="greedy tokens per request")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7, help="alternating requests per configuration")
    ap.add_argument("--probe-rounds", type=int, default=40, help="probe round trips between requests")
    ap.add_argument("--transports", nargs="+", default=["websocket", "http"], choices=["websocket", "http"])
    ap.add_argument("--pin", action="store_true",
                    help="pin the cloud to core 1 and the edges to core 0 (two machines' worth of caches)")
    ap.add_argument("--threads", type=int, help="torch threads of each tier (default: the tiers' own default)")
    ap.add_argument("--edge-args", nargs=argparse.REMAINDER, default=[],
                    help="extra flags for the split edge (the rest of the command line)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/step_overhead.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edgesplit-step-"))
    rows = []
    for name in args.models:
        path = model_dir(name, work)
        rows.append(bench_model(name, path, CUTS.get(name, "2"), args, work))
    write_report(args, {"rows": rows})
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()

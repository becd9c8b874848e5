"""How long frames take to cross loopback around the cloud's own time: prompts against decode steps.

    python bench/frame_delivery.py                 # the shipped model, split 2:6 int8, both transports, 3 runs
    python bench/frame_delivery.py --transports websocket --runs 5 --gap-ms 0

A cloud runs as a real process (`edgesplit serve cloud`); this process plays an edge with the edge's own client
(`edge_service.cloud_client.CloudClient`) and codec: sessions of one prompt frame (8-400 positions of random
int8 activations) and a few one-position decode frames, each session ended as the edge ends it, with an idle
gap before the next. Per exchange: the time the client waited less the compute time the cloud reports in its
answer (decode, queue, blocks, encode: `splitcore.wire`), i.e. what the link estimator
(`profiling.link_estimator`) takes for the wire. Reported per run and kind of frame: that time's median and
10th percentile, and how many exchanges waited more than `--stall-ms` beyond it.

The question it answers (issue 19): on loopback the link is far faster than any frame is long (64 KiB cross in
tens of microseconds), so what a prompt frame waits beyond a decode step is not the wire. This machine's
figures are in README ("Why loopback is hard to measure from frames").
"""

from __future__ import annotations

import os

from splitcore.openmp import openmp_env

os.environ.update(openmp_env())  # this process plays a tier: its OpenMP threads idle as the services' do

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from edge_service.cloud_client import CloudClient
from edgesplit.procs import free_port, serve, wait_healthy
from splitcore.codec import Dtype
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.loading import LoadedModel, load_checkpoint
from splitcore.ranges import LayerRange
from splitcore.schema import SessionMeta
from splitcore.wire import Flags, FrameCodec

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = (8, 400, 40, 200, 16, 300)  # the link bench's prompt lengths (bench/link_estimate.py)


@dataclass(frozen=True)
class Exchange:
    rows: int  # positions in the frame sent (a prompt's, or 1 for a decode step)
    prompt: bool
    bytes: int  # both ways, as the link estimator counts them
    waited_ms: float  # beyond the compute time the cloud reports in its answer


def session_waits(client: CloudClient, loaded: LoadedModel, layers: LayerRange, prompts: Iterable[int],
                  decode_steps: int, gap_s: float) -> list[Exchange]:
    """For each prompt length, a session: its prompt frame, `decode_steps` decode frames, its end, then `gap_s`
    idle; every exchange's wait beyond the cloud's reported compute (the edge's own client and codec, int8)."""
    meta = SessionMeta(codec="int8", weights_digest=loaded.digests.part(layers, embed=False, head=False))
    codec, width = FrameCodec(Dtype.INT8), loaded.layered.hidden_size
    exchanges = []
    for rows in prompts:
        sid, position = uuid.uuid4(), 0
        for step in range(1 + decode_steps):
            n = rows if step == 0 else 1
            frame = codec.encode(sid, position, layers, torch.randn(n, width), Flags.NONE,
                                 meta=meta.model_dump_json().encode() if step == 0 else b"")
            started = time.perf_counter()
            data = client.forward(frame, session=sid, timeout_s=60)
            waited = (time.perf_counter() - started) * 1000 - codec.decode(data).compute_ms
            exchanges.append(Exchange(n, step == 0, len(frame) + len(data), waited))
            position += n
        client.end_session(sid)
        time.sleep(gap_s)
    return exchanges


def summary(times: list[float], stall_ms: float) -> dict:
    p10 = statistics.quantiles(times, n=10)[0] if len(times) > 1 else times[0]
    return {"n": len(times), "median_ms": statistics.median(times), "p10_ms": p10,
            "stalls": sum(t > p10 + stall_ms for t in times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transports", nargs="+", default=["websocket", "http"], choices=["websocket", "http"])
    ap.add_argument("--runs", type=int, default=3, help="runs per transport, alternating")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the six prompt lengths per run")
    ap.add_argument("--decode-steps", type=int, default=4)
    ap.add_argument("--gap-ms", type=float, default=50.0, help="idle time between sessions")
    ap.add_argument("--stall-ms", type=float, default=1.5, help="a wait this far over the kind's 10th percentile")
    args = ap.parse_args()
    model = ROOT / DEFAULT_MODEL_DIR
    loaded, layers = load_checkpoint(model), LayerRange(start=2, end=6)
    port, work = free_port(), Path(tempfile.mkdtemp(prefix="edgesplit-frame-delivery-"))
    with serve("cloud", ["--model", str(model)], port, work / "cloud.log") as cloud:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health", cloud, timeout_s=300)
        clients = {t: CloudClient(url, transport=t) for t in args.transports}
        for client in clients.values():  # warm-up: the channel's handshake, first shapes
            session_waits(client, loaded, layers, PROMPTS[:2], 1, 0.0)
        for run in range(args.runs):
            for transport, client in clients.items():
                waits = session_waits(client, loaded, layers, PROMPTS * args.rounds, args.decode_steps,
                                      args.gap_ms / 1000)
                p = summary([e.waited_ms for e in waits if e.prompt], args.stall_ms)
                d = summary([e.waited_ms for e in waits if not e.prompt], args.stall_ms)
                print(f"run {run + 1} {transport:>9}: beyond the cloud's time, prompt frames median "
                      f"{p['median_ms']:.2f} ms (p10 {p['p10_ms']:.2f}), {p['stalls']}/{p['n']} stalled; decode "
                      f"frames median {d['median_ms']:.2f} ms (p10 {d['p10_ms']:.2f}), {d['stalls']}/{d['n']} "
                      f"stalled", flush=True)
        for client in clients.values():
            client.close()


if __name__ == "__main__":
    main()

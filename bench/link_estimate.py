"""The edge's link estimate against the link, from real traffic alone (a static plan sends no probes).

    python bench/link_estimate.py            # loopback and the emulated links of bench/links.py, about 3 minutes

For each link: a cloud and an edge (shipped model, split 2:6 int8) as real processes, the edge's frames through
the userspace link emulator (`edgesplit/tools/linkemu.py`) or straight over loopback; greedy requests with
prompts of 8 to 400 tokens; then the edge's estimate (`GET /admin/bandwidth`) against the link: its nominal
bandwidth, and what bulk transfers along the frames' own path reach in the same run (1 MiB messages against
64-byte ones on the frame channel, through the emulator when there is one; the cloud reads each whole and
refuses it at once). On loopback only the second exists.
"""

from __future__ import annotations

import os

from splitcore.openmp import openmp_env

os.environ.update(openmp_env())  # this process plays a tier: its OpenMP threads idle as the services' do

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from edge_service.cloud_client import CloudClient
from edgesplit.procs import free_port, serve, wait_healthy
from edgesplit.tools.linkbench import LINKS
from edgesplit.tools.linkemu import LinkEmulator
from splitcore.channel import CHANNEL_PATH, pack
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.loading import LoadedModel, load_checkpoint
from splitcore.ranges import LayerRange

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-link-estimate"


def bulk_bits_per_second(port: int, size: int = 1 << 20, pairs: int = 15) -> float:
    """What the frame channel carries to the cloud at 127.0.0.1:`port`: (big - small) bytes over the extra round
    trip time, the median over `pairs` of a small and a big message sent one after the other (so a drift of the
    machine's speed falls on both of a pair). The messages are not frames, so the cloud answers each with a
    short refusal."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}{CHANNEL_PATH}", max_size=None, compression=None) as ws:
        def ms(message: bytes) -> float:
            started = time.perf_counter()
            ws.send(message)
            ws.recv(timeout=120)
            return (time.perf_counter() - started) * 1000
        small, big = pack(1, b"\0" * 64), pack(1, b"\0" * size)
        ms(small), ms(big)  # warm up
        extra_ms = statistics.median(-ms(small) + ms(big) for _ in range(pairs))
        return (size - 64) * 8 / (extra_ms / 1000)


def frames_bits_per_second(port: int, loaded: LoadedModel, pairs: int = 15, small: int = 40, big: int = 400
                           ) -> float:
    """What the edge's own frames get through the same path (the ruler the link estimator is judged against on
    loopback, where no nominal bandwidth exists): prompt frames of `small` and `big` positions of the shipped
    model's 2:6 int8 split, one after the other as new sessions, `pairs` times; the median of (big's wait - small's
    wait) beyond the compute each answer reports, against the bytes they differ by both ways (a prompt's answer
    carries every row back). The same sums the estimator does, but from a controlled sweep of 2 x `pairs`
    exchanges instead of whatever traffic came."""
    from frame_delivery import session_waits  # this folder's script (bench/ is no package)

    layers = LayerRange(start=2, end=6)  # `loaded`: the shipped model, as the edge of `estimate_after_traffic`
    client = CloudClient(f"http://127.0.0.1:{port}")  # the edge's default transport
    try:
        session_waits(client, loaded, layers, (small, big), 0, 0.0)  # warm-up: the handshake, the first shapes
        extra, grown = [], 0
        for _ in range(pairs):
            a, b = session_waits(client, loaded, layers, (small, big), 0, 0.0)
            extra.append(b.waited_ms - a.waited_ms)
            grown = b.bytes - a.bytes
        return grown * 8 / (max(statistics.median(extra), 1e-3) / 1000)
    finally:
        client.close()


def estimate_after_traffic(cloud_port: int, edge_url_port: int, work: Path, name: str, requests: int) -> dict:
    model = str(ROOT / DEFAULT_MODEL_DIR)
    args = ["--model", model, "--cloud", f"http://127.0.0.1:{cloud_port}", "--cut", "2:6", "--codec", "int8",
            "--speculate", "off"]
    with serve("edge", args, edge_url_port, work / f"edge-{name}.log", env={"EDGE_ADMIN_TOKEN": TOKEN}) as edge:
        url = f"http://127.0.0.1:{edge_url_port}"
        wait_healthy(f"{url}/health", edge, timeout_s=300)
        for i in range(requests):
            prompt = list(range(100, 100 + (8, 400, 40, 200, 16, 300)[i % 6]))
            httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 6, "temperature": 0},
                       timeout=300).raise_for_status()
        auth = {"authorization": f"Bearer {TOKEN}"}
        return httpx.get(f"{url}/admin/bandwidth", headers=auth).json()["estimate"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--links", nargs="+", default=["loopback", *LINKS], choices=["loopback", *LINKS])
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/link_estimate.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesplit-link-estimate-"))
    rows = []
    cloud_port = free_port()
    shipped = load_checkpoint(ROOT / DEFAULT_MODEL_DIR)  # once: the frames ruler of every link sends its frames
    with serve("cloud", ["--model", str(ROOT / DEFAULT_MODEL_DIR)], cloud_port, work / "cloud.log") as cloud:
        wait_healthy(f"http://127.0.0.1:{cloud_port}/health", cloud, timeout_s=300)
        for link in args.links:
            nominal, rtt = LINKS.get(link, (None, None))
            emulator: contextlib.AbstractContextManager[int] = (
                contextlib.nullcontext(cloud_port) if nominal is None else LinkEmulator(cloud_port, nominal, rtt))
            with emulator as port:
                bulk = bulk_bits_per_second(port)
                frames = frames_bits_per_second(port, shipped)
                estimate = estimate_after_traffic(port, free_port(), work, link, args.requests)
            got = estimate["bandwidth_bps"]
            row = {"link": link, "nominal_bps": nominal, "rtt_ms": rtt, "bulk_bps": bulk, "frames_bps": frames,
                   "estimate": estimate, "estimate_over_bulk": got / bulk, "estimate_over_frames": got / frames,
                   "estimate_over_nominal": got / nominal if nominal else None}
            rows.append(row)
            against = f"{got / nominal:.2f}x nominal, " if nominal else ""
            print(f"{link:>8}: nominal {'-' if nominal is None else f'{nominal / 1e6:g} Mbit/s, {rtt:g} ms'}; bulk "
                  f"{bulk / 1e6:.1f} Mbit/s; frames {frames / 1e6:.1f} Mbit/s; estimate {got / 1e6:.1f} Mbit/s, "
                  f"{estimate['rtt_ms']:.2f} ms ({estimate['samples']} exchanges): {against}{got / bulk:.2f}x bulk, "
                  f"{got / frames:.2f}x frames", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

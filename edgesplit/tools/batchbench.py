"""How one cloud's throughput grows with the number of edges it serves, against batched monolithic generation.

    python bench/batching.py                      # the shipped model and a GPT-2-small-shaped 124M model
    python bench/batching.py --models default --streams 1 4 16 --duration-s 10

A cloud process is started on loopback; N emulated edges (asyncio tasks of this process, each its own
session, as N devices would be) run closed-loop generations through it: a prompt frame, then one frame per
output token. Two plans: cloud-only (token ids in, the cloud samples and answers a token) and a mid cut with
int8 activations (hidden states in and out; the emulated edge does not compute its own blocks, its device is
not this machine, so the frames carry random activations of the model's width: the cloud's work does not depend
on their values). Reported per level: output tokens/s, TTFT and TPOT percentiles, and the ratio to one stream
and to `transformers` `generate` at the same batch size, measured in the same run (the limit: no serving
overhead, one batch of equal prompts). End-to-end numbers through a real edge are `edgesplit loadtest`'s.

The cost model's prediction is checked at each level: the cloud's profile is measured by `edgesplit profile` (the
same machine and threads, batched rounds and the service's own per-request cost included) before the cloud starts,
and again just before each later checked level while the cloud idles (this VM's speed drifts by up to 2x over
minutes: a profile taken at the start misjudged later levels by 25-60%; `--profile-once` keeps the first), the
link is the median round trip of an empty `POST /v1/probe` over the same kind of connection, and the emulated
edges cost nothing (their profile is the cloud's, scaled to zero compute). Reported: predicted tokens/s and TPOT,
and their errors against the measurement. The emulated edges' own CPU per exchange (HTTP, framing, random
activations) is measured in each level (process time over exchanges) and is the edge profile's `request_ms`;
they are one process on the cloud's two cores, where real devices would be elsewhere. Each level also reads
the cloud's `/metrics` before and after: its batched forwards' time per step, against the wall time per step, shows
how much of a step is compute and how much is the service and the link.

The edges do not start in step: edge i's first generation is cut to 1 + i x OUTPUT / N tokens, so the prompts of
the N streams fall evenly over a generation instead of arriving in one burst each time. That first generation is a
warm-up: tokens/s counts the tokens that arrive between the end of the last edge's warm-up and the level's end
(a warm-up generation pays a whole prompt for fewer tokens), and TTFT and TPOT leave it out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from edgesplit.procs import free_port, serve, wait_healthy
from edgesplit.tools.checkpoints import model_dir
from edgesplit.tools.reports import write_report
from partitioner.costmodel import Estimate, Workload, predict
from profiling.link_estimator import Link
from profiling.profile import Profile
from splitcore.codec import Dtype
from splitcore.loading import LoadedModel, load_checkpoint
from splitcore.metrics import sample_totals
from splitcore.plan import Plan as SplitPlan
from splitcore.ranges import LayerRange
from splitcore.replicas import REPLICA_URL_HEADER, SESSION_HEADER
from splitcore.schema import SessionMeta
from splitcore.wire import MEDIA_TYPE, Flags, FrameCodec

STREAMS = (1, 4, 8, 16, 32, 64)
CHECKED = (1, 8, 32)  # the levels whose median error the cost model must keep within 15%


@dataclass
class Plan:
    name: str
    layers: LayerRange
    tokens: bool  # token ids in, a sampled token out (the cloud holds embeddings and head)
    codec: Dtype


class _Connection:
    """One keep-alive HTTP/1.1 connection, as cheap as a client can be: the driver must not be what saturates
    first (httpx spends about 1 ms of CPU per request, so 32 emulated edges in one process would measure httpx)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.headers: dict[str, str] = {}  # the latest answer's headers, names in lower case
        self._replicas: dict[str, _Connection] = {}  # a replicated cloud's replicas' own listeners, as an edge

    async def replica(self, url: str) -> _Connection:
        """A connection to a replica's own listener (`cloud_service.direct`), opened once, as an edge does."""
        known = self._replicas.get(url)
        if known is None or known.reader.at_eof():  # the replica closed it while idle (keep-alive timeout)
            self._replicas[url] = await _Connection.open(url)
        return self._replicas[url]

    @classmethod
    async def open(cls, url: str) -> _Connection:
        host, port = httpx.URL(url).host, httpx.URL(url).port
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, method: str, path: str, body: bytes = b"", session: uuid.UUID | None = None
                      ) -> tuple[int, bytes]:
        """One request; `session` goes in the session header, as an edge sends it (a replicated cloud routes by
        it)."""
        routed = f"{SESSION_HEADER}: {session}\r\n" if session is not None else ""
        head = (f"{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: {MEDIA_TYPE}\r\n{routed}"
                f"content-length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        length = int(self.headers.get("content-length", 0))
        return status, await self.reader.readexactly(length) if length else b""

    async def close(self) -> None:
        for replica in self._replicas.values():
            await replica.close()
        self.writer.close()
        with contextlib.suppress(OSError):  # closed by the server already
            await self.writer.wait_closed()


@dataclass
class Level:
    ttft_s: list[float] = field(default_factory=list)
    tpot_s: list[float] = field(default_factory=list)
    generations: int = 0
    failed: int = 0
    token_times: list[float] = field(default_factory=list)  # when each output token arrived


async def _generation(conn: _Connection, plan: Plan, loaded: LoadedModel, prompt: torch.Tensor,
                      output_tokens: int, level: Level, warm_up: bool = False) -> None:
    """One closed-loop generation; a warm-up one counts in the token times only (not in TTFT, TPOT, totals)."""
    sid, codec = uuid.uuid4(), FrameCodec(plan.codec)
    meta = SessionMeta(codec="int8" if plan.codec == Dtype.INT8 else "fp32",
                       weights_digest=loaded.digests.part(plan.layers, embed=plan.tokens, head=plan.tokens))
    flags = Flags.HEAD if plan.tokens else Flags.NONE
    width = loaded.layered.hidden_size
    payload = prompt if plan.tokens else torch.randn(len(prompt), width)
    position, started, gaps = 0, time.perf_counter(), list[float]()
    target = conn  # a replicated cloud: the session's replica's own listener after the first frame, as an edge
    try:
        for i in range(output_tokens):
            frame = codec.encode(sid, position, plan.layers, payload, flags,
                                 meta=meta.model_dump_json().encode() if i == 0 else b"")
            t = time.perf_counter()
            status, body = await target.request("POST", "/v1/shard/forward", frame, sid)
            if status != 200:
                raise RuntimeError(f"the cloud answered {status}: {body[:200]!r}")
            if i == 0 and (own := conn.headers.get(REPLICA_URL_HEADER)) is not None:
                target = await conn.replica(own)
            out = codec.decode(body)
            now = time.perf_counter()
            level.token_times.append(now)
            (level.ttft_s if i == 0 and not warm_up else gaps).append(now - (started if i == 0 else t))
            position += len(payload)
            payload = out.tensor.reshape(-1)[-1:].long() if plan.tokens else torch.randn(1, width)
        if warm_up:
            return
        level.generations += 1
        if gaps:
            level.tpot_s.append(statistics.mean(gaps))
    except (RuntimeError, OSError, asyncio.IncompleteReadError) as exc:
        level.failed += 1
        print(f"  a generation failed: {exc!r}", flush=True)
    finally:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):  # a failed connection: the cloud's TTL frees it
            await target.request("DELETE", f"/v1/sessions/{sid}", session=sid)


async def run_level(url: str, plan: Plan, loaded: LoadedModel, streams: int, prompt_tokens: int, output_tokens: int,
                 duration_s: float, counters: bool = True) -> dict:
    """One level: `streams` emulated edges for `duration_s`; `counters=False` leaves out the cloud's /metrics
    figures (a replicated cloud answers each scrape from any one replica)."""
    level = Level()
    gen = torch.Generator().manual_seed(streams)
    started = time.perf_counter()
    deadline = started + duration_s

    async def edge(i: int) -> None:  # a connection of its own, as each device has
        conn = await _Connection.open(url)
        # Devices do not start in step: the first generation of edge i is cut short so the streams' prompts
        # fall evenly over a generation's tokens (in step, equal generations keep every prompt arriving in
        # one burst, whose prefill stalls every stream at once).
        # That first generation is a warm-up: tokens/s counts only what arrives once every edge is past it.
        tokens, warm_up = 1 + (i * output_tokens) // streams, True
        try:
            while time.perf_counter() < deadline:
                prompt = torch.randint(0, loaded.layered.vocab_size, (prompt_tokens,), generator=gen)
                await _generation(conn, plan, loaded, prompt, tokens, level, warm_up)
                if warm_up:
                    warmed.append(time.perf_counter())
                tokens, warm_up = output_tokens, False
        finally:
            await conn.close()
    warmed: list[float] = []
    before = await _cloud_counters(url) if counters else dict.fromkeys(_COUNTERS, 0.0)
    cpu = time.process_time()
    await asyncio.gather(*(edge(i) for i in range(streams)))
    cpu = time.process_time() - cpu
    after = await _cloud_counters(url) if counters else before
    counted = {k: after[k] - before[k] for k in before}
    steps = max(1.0, counted["edgesplit_cloud_step_duration_seconds_count"])
    # the window: from the last edge's end of warm-up to the deadline (the whole run if that leaves too little)
    begin = max(warmed, default=started)
    if deadline - begin < duration_s / 4:
        begin, end = started, max(level.token_times, default=deadline)
    else:
        end = deadline
    in_window = sum(1 for t in level.token_times if begin <= t <= end)

    def pct(xs: list[float], q: int) -> float | None:
        return round(statistics.quantiles(xs, n=100)[q - 1] * 1000, 2) if len(xs) > 1 else (
            round(xs[0] * 1000, 2) if xs else None)
    return {"streams": streams, "output_tokens_per_s": in_window / max(end - begin, 1e-9), "failed": level.failed,
            "generations": level.generations, "window_s": end - begin,
            # the emulated edges' own CPU per exchange (one process, on the cloud's cores)
            "edges_cpu_ms_per_request": cpu * 1000 / max(1, len(level.token_times) + level.generations + streams),
            # the cloud's batched forwards (its compute) per step, and its rounds' mean size, from its /metrics
            "cloud_forward_ms_per_step": counted["edgesplit_cloud_batch_forward_seconds_sum"] * 1000 / steps,
            "cloud_wall_ms_per_step": (time.perf_counter() - started) * 1000 / steps,
            "cloud_rows_per_round": counted["edgesplit_cloud_batch_size_sum"]
            / max(1.0, counted["edgesplit_cloud_batch_size_count"]),
            "ttft_ms": {f"p{q}": pct(level.ttft_s, q) for q in (50, 90, 99)},
            "tpot_ms": {f"p{q}": pct(level.tpot_s, q) for q in (50, 90, 99)}}


_COUNTERS = ("edgesplit_cloud_step_duration_seconds_count", "edgesplit_cloud_batch_forward_seconds_sum",
             "edgesplit_cloud_batch_size_sum", "edgesplit_cloud_batch_size_count")


async def _cloud_counters(url: str) -> dict[str, float]:
    """The cloud's cumulative step and forward figures from its `/metrics`."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    values = sample_totals(text)
    return {name: values.get(name, 0.0) for name in _COUNTERS}


@torch.inference_mode()
def monolithic(loaded: LoadedModel, batch: int, prompt_tokens: int, output_tokens: int, repeats: int = 2) -> float:
    """Output tokens/s of `transformers` `generate` on a batch of equal-length prompts (the best of `repeats`)."""
    model = loaded.layered.model
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, loaded.layered.vocab_size, (batch, prompt_tokens), generator=gen)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=output_tokens,
                       min_new_tokens=output_tokens, do_sample=False, pad_token_id=0)
        best = max(best, batch * output_tokens / (time.perf_counter() - started))
    return best


def plans(loaded: LoadedModel) -> list[Plan]:
    n = loaded.layered.num_layers
    return [Plan("cloud-only", LayerRange(start=0, end=n), True, Dtype.INT32),
            Plan(f"mid cut {n // 4}:{n - n // 4} int8", LayerRange(start=n // 4, end=n - n // 4), False, Dtype.INT8)]


def _as_plan(plan: Plan, n: int) -> SplitPlan:
    if plan.tokens:
        return SplitPlan(num_layers=n, cut_a=0, cut_b=n, head="cloud", codec="fp32")
    return SplitPlan(num_layers=n, cut_a=plan.layers.start, cut_b=plan.layers.end, head="edge", codec="int8")


def cloud_profile(path: Path, threads: int, work: Path) -> Profile:
    """The cloud's profile as an operator makes it (`edgesplit profile`, torch only), before the cloud starts: in a
    process of its own, with the OpenMP wait policy `edgesplit serve` runs with."""
    out = work / f"cloud-profile-{path.name}.json"
    subprocess.run([sys.executable, "-m", "edgesplit.cli", "profile", "--model", str(path), "--device-name", "cloud",
                    "--threads", str(threads), "--backends", "torch", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Profile.load(out)


async def _probe_rtt_ms(url: str, rounds: int = 60) -> float:
    conn = await _Connection.open(url)
    try:
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            await conn.request("POST", "/v1/probe", b"\0" * 64)
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times[5:])
    finally:
        await conn.close()


def predicted(plan: Plan, loaded: LoadedModel, cloud: Profile, link: Link, streams: int, prompt_tokens: int,
              output_tokens: int, edge_ms_per_request: float) -> Estimate:
    """The cost model's figures for a level. The emulated edges compute no blocks (their profile: the cloud's at
    zero compute) and spend `edge_ms_per_request` of CPU on each exchange (measured in the level)."""
    workload = Workload(prompt_tokens=prompt_tokens, output_tokens=output_tokens, streams=streams)
    edge = cloud.slowed(0.0).model_copy(update={"request_ms": edge_ms_per_request, "request_busy_ms": 0.0})
    return predict(_as_plan(plan, loaded.layered.num_layers), edge, cloud, link, workload)


def model_error(rows: list[dict]) -> float | None:
    """Median relative error of the predicted tokens/s over the checked levels present."""
    errors = [r["predicted"]["tokens_per_s_error"] for r in rows if r["streams"] in CHECKED and "predicted" in r]
    return statistics.median(errors) if errors else None


def bench_model(path: Path, name: str, args: argparse.Namespace, work: Path) -> dict:
    loaded = load_checkpoint(path)
    torch.set_num_threads(args.threads)
    limit = {b: monolithic(loaded, b, args.prompt_tokens, args.output_tokens) for b in args.streams}
    print(f"{name}: monolithic generate tok/s by batch: "
          + ", ".join(f"{b}: {v:.0f}" for b, v in limit.items()), flush=True)
    profile = None if args.url else cloud_profile(path, args.threads, work)
    if profile is not None:
        print(f"  profile: a lone request's own cost {profile.request_ms:.2f} ms, in a batch "
              f"{profile.request_busy_ms:.2f} ms", flush=True)
    port = free_port()
    url = args.url or f"http://127.0.0.1:{port}"
    cloud_args = ["--model", str(path), "--max-sessions-per-caller", "1024", "--threads", str(args.threads),
                  "--max-batch", str(args.max_batch)]
    result: dict = {"model": name, "params": sum(p.numel() for p in loaded.layered.model.parameters()),
                    "monolithic_tokens_per_s": limit, "plans": {}}
    with contextlib.ExitStack() as stack:
        if not args.url:
            proc = stack.enter_context(serve("cloud", cloud_args, port, work / f"{name}-cloud.log"))
            wait_healthy(f"{url}/health", proc)
        link = Link(bandwidth_bps=10e9, rtt_ms=asyncio.run(_probe_rtt_ms(url)))
        result["link_rtt_ms"] = link.rtt_ms
        fresh = True  # the profile measured before the cloud started serves the first level
        for plan in plans(loaded):
            rows: list[dict] = []
            for streams in args.streams:
                if profile is not None and streams in CHECKED and not args.profile_once and not fresh:
                    profile = cloud_profile(path, args.threads, work)  # the machine's speed just before the level
                row = asyncio.run(run_level(url, plan, loaded, streams, args.prompt_tokens, args.output_tokens,
                                         args.duration_s))
                fresh = False  # a level has run since the profile was measured
                single = rows[0]["output_tokens_per_s"] if rows else row["output_tokens_per_s"]
                row["x_one_stream"] = row["output_tokens_per_s"] / single
                row["x_monolithic"] = row["output_tokens_per_s"] / limit[streams]
                if profile is not None:
                    est = predicted(plan, loaded, profile, link, streams, args.prompt_tokens, args.output_tokens,
                                    row["edges_cpu_ms_per_request"])
                    tok_s = streams * args.output_tokens / est.total_ms * 1000
                    row["predicted"] = {
                        "tokens_per_s": tok_s, "tpot_ms": est.time_per_output_token_ms,
                        "ttft_ms": est.time_to_first_token_ms,
                        "tokens_per_s_error": abs(tok_s - row["output_tokens_per_s"]) / row["output_tokens_per_s"],
                        "tpot_error": (abs(est.time_per_output_token_ms - row["tpot_ms"]["p50"]) / row["tpot_ms"]["p50"]
                                       if row["tpot_ms"]["p50"] else None)}
                print(f"  {plan.name}, {streams} streams: {row['output_tokens_per_s']:.0f} tok/s "
                      f"({row['x_one_stream']:.1f}x one stream, {row['x_monolithic']:.2f}x monolithic), "
                      f"ttft p50 {row['ttft_ms']['p50']} ms, tpot p50/p99 {row['tpot_ms']['p50']}/"
                      f"{row['tpot_ms']['p99']} ms, failed {row['failed']}; the cloud's forwards "
                      f"{row['cloud_forward_ms_per_step']:.2f} of {row['cloud_wall_ms_per_step']:.2f} ms per step, "
                      f"{row['cloud_rows_per_round']:.1f} rows per round", flush=True)
                if "predicted" in row:
                    guess = row["predicted"]
                    print(f"    predicted {guess['tokens_per_s']:.0f} tok/s (error {guess['tokens_per_s_error']:.0%}), "
                          f"tpot {guess['tpot_ms']:.1f} ms", flush=True)
                rows.append(row)
            result["plans"][plan.name] = rows
            error = model_error(rows)
            if error is not None:
                result.setdefault("cost_model_median_error", {})[plan.name] = error
                print(f"  {plan.name}: cost model median error over {CHECKED} streams: {error:.0%}", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default", "gpt2-small-shaped"],
                    help="'default' (the shipped model) and/or shapes of edgesplit.tools.checkpoints")
    ap.add_argument("--streams", type=int, nargs="+", default=list(STREAMS))
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--duration-s", type=float, default=15.0, help="each level runs generations this long")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the cloud and of the monolithic run")
    ap.add_argument("--max-batch", type=int, default=64, help="the cloud's --max-batch")
    ap.add_argument("--profile-once", action="store_true",
                    help="predict every level from the profile measured before the cloud starts (faster; this "
                         "VM's drifting speed then shows up as model error)")
    ap.add_argument("--url", help="drive this running cloud instead of starting one (one model; e.g. an older "
                                  "version, to compare); it must allow many sessions per caller")
    ap.add_argument("--out", type=Path, default=Path("bench/results/batching.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edgesplit-batching-"))
    results = []
    for name in args.models:
        path = model_dir(name, work)
        results.append(bench_model(path, name, args, work))
    report: dict = {"models": results}
    write_report(args, report)
    from edgesplit.tools.batchplot import plot  # matplotlib only when writing the report

    print(f"report: {args.out}; plot: {plot(report, args.out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()

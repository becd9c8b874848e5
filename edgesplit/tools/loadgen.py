"""Load against the edge's OpenAI-compatible API: `edgesplit loadtest` and `loadtest/run.py`.

Clients are the `openai` library's `AsyncOpenAI` on asyncio, streaming completions with usage. Closed loop:
`concurrency` clients send back to back. Open loop: requests arrive at `rate` per second, as a Poisson process or
evenly spaced (with an optional cap on requests in flight), whatever the server's pace. Each stage is bounded by
a duration and a request count. Prompts are token ids of a set length, so each request has exactly the prompt
it says.

Per request: time to first token (first text chunk), inter-token latency (gaps between chunks), time per output
token ((end - first token) / (tokens - 1)) and end-to-end latency; errors by kind. While the load runs, both
tiers' `/metrics` are sampled for resident memory (`process_resident_memory_bytes`).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

import httpx
import openai
from openai import AsyncOpenAI

from splitcore.defaults import MIB
from splitcore.metrics import sample_totals


@dataclass
class Sent:
    """One request as the client saw it; times in seconds from the stage's start."""

    started: float
    first: float | None = None
    ended: float | None = None
    chunks: list[float] = field(default_factory=list)
    tokens: int = 0
    text: str = ""
    error: str | None = None


@dataclass
class Stage:
    mode: str  # "closed" or "open"
    concurrency: int  # closed: clients; open: cap on requests in flight (0: none)
    rate: float  # open: requests per second
    arrivals: str  # open: "poisson" or "constant"
    duration_s: float
    max_requests: int
    prompt_tokens: int
    output_tokens: int


def prompt_ids(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 250) for _ in range(length)]


async def _one(client: AsyncOpenAI, stage: Stage, prompt: list[int], t0: float, model: str) -> Sent:
    sent = Sent(started=time.perf_counter() - t0)
    try:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=stage.output_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True})
        async for chunk in stream:
            now = time.perf_counter() - t0
            if chunk.choices and chunk.choices[0].text:
                sent.first = sent.first if sent.first is not None else now
                sent.chunks.append(now)
                sent.text += chunk.choices[0].text
            if chunk.usage is not None:
                sent.tokens = chunk.usage.completion_tokens
        sent.ended = time.perf_counter() - t0
    except openai.APIStatusError as exc:
        sent.error = f"HTTP {exc.status_code}"
    except openai.APITimeoutError:
        sent.error = "timeout"
    except openai.APIConnectionError as exc:
        sent.error = f"connection: {type(exc.__cause__).__name__ if exc.__cause__ else 'refused'}"
    except openai.APIError as exc:  # an error event inside the stream
        sent.error = f"stream error: {str(exc)[:60]}"
    if sent.error is None and sent.tokens == 0:
        sent.error = "no usage in the stream"
    return sent


async def run_stage(url: str, stage: Stage, model: str = "default", seed: int = 0, timeout_s: float = 120.0,
                    prompts: list[list[int]] | None = None) -> tuple[list[Sent], float]:
    """Run one stage; every request sent, and the stage's wall time. `prompts` (taken in turn) defaults to
    prompts of `stage.prompt_tokens` random ids."""
    prompts = prompts or [prompt_ids(stage.prompt_tokens, seed + i) for i in range(64)]
    # openai's own pooled client (up to 1,000 connections); no retries, so each failure is counted as it happened
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=timeout_s)
    results: list[Sent] = []
    t0 = time.perf_counter()
    deadline = t0 + stage.duration_s
    counter = iter(range(stage.max_requests))

    def next_prompt() -> list[int] | None:
        i = next(counter, None)
        return None if i is None or time.perf_counter() >= deadline else prompts[i % len(prompts)]

    async def closed_client() -> None:
        while (prompt := next_prompt()) is not None:
            results.append(await _one(client, stage, prompt, t0, model))

    async def open_loop() -> None:
        rng, tasks = random.Random(seed), []
        gate = asyncio.Semaphore(stage.concurrency) if stage.concurrency else None

        async def send(prompt: list[int]) -> None:
            if gate is None:
                results.append(await _one(client, stage, prompt, t0, model))
                return
            async with gate:
                results.append(await _one(client, stage, prompt, t0, model))

        while (prompt := next_prompt()) is not None:
            tasks.append(asyncio.create_task(send(prompt)))
            await asyncio.sleep(rng.expovariate(stage.rate) if stage.arrivals == "poisson" else 1 / stage.rate)
        await asyncio.gather(*tasks)

    async with client:
        if stage.mode == "closed":
            await asyncio.gather(*(closed_client() for _ in range(stage.concurrency)))
        else:
            await open_loop()
    return results, time.perf_counter() - t0


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90, p99 and mean, in ms (values in seconds); None when there are none."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {"p50": cuts[49] * 1000, "p90": cuts[89] * 1000, "p99": cuts[98] * 1000,
            "mean": statistics.fmean(values) * 1000}


def summarise(results: list[Sent], wall_s: float) -> dict:
    """What `vllm bench serve` and GuideLLM report for a stage."""
    good = [r for r in results if r.error is None]
    errors: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    ttft = [r.first - r.started for r in good if r.first is not None]
    e2e = [r.ended - r.started for r in good if r.ended is not None]
    tpot = [(r.ended - r.first) / (r.tokens - 1) for r in good
            if r.tokens > 1 and r.first is not None and r.ended is not None]
    itl = [b - a for r in good for a, b in zip(r.chunks, r.chunks[1:], strict=False)]
    out_tokens = sum(r.tokens for r in good)
    return {"completed": len(good), "failed": len(results) - len(good), "errors": errors, "duration_s": wall_s,
            "requests_per_s": len(good) / wall_s, "output_tokens_per_s": out_tokens / wall_s,
            "output_tokens": out_tokens, "ttft_ms": percentiles(ttft), "tpot_ms": percentiles(tpot),
            "itl_ms": percentiles(itl), "e2e_ms": percentiles(e2e), "distinct_outputs": len({r.text for r in good})}


class MemorySampler:
    """Samples each URL's `process_resident_memory_bytes` every `every_s` while the load runs."""

    def __init__(self, urls: dict[str, str], every_s: float = 1.0) -> None:
        self.urls, self.every_s = urls, every_s
        self.samples: list[dict] = []
        self._task: asyncio.Task | None = None

    async def _run(self, t0: float) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                row: dict = {"t_s": time.perf_counter() - t0}
                for name, url in self.urls.items():
                    try:
                        row[name] = _rss_mib((await client.get(f"{url}/metrics")).text)
                    except httpx.HTTPError:
                        row[name] = None
                self.samples.append(row)
                await asyncio.sleep(self.every_s)

    def start(self, t0: float) -> None:
        self._task = asyncio.create_task(self._run(t0))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def summary(self) -> dict:
        """Per tier: MiB at the start, at the end, the peak, and the growth over the second half of the run."""
        out = {}
        for name in self.urls:
            series = [(s["t_s"], s[name]) for s in self.samples if s.get(name) is not None]
            if len(series) < 2:
                continue
            half = [v for t, v in series if t >= series[-1][0] / 2]
            out[name] = {"start_mib": series[0][1], "end_mib": series[-1][1], "peak_mib": max(v for _, v in series),
                         "second_half_growth_mib": half[-1] - half[0]}
        return out


def _rss_mib(text: str) -> float | None:
    rss = sample_totals(text).get("process_resident_memory_bytes")
    return rss / MIB if rss is not None else None

"""A deployment on one machine with an emulated link, and streaming client traffic through it.

Both tiers run as real processes; the edge reaches the cloud through `LinkEmulator`, whose bandwidth and delay
the caller changes mid-run. `Traffic` keeps a few streaming clients busy and records, per request, when each
chunk arrived, the text, the plan it ran on and any error. Used by the adaptive service test and
`bench/adaptive.py`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edgesplit.procs import free_port, serve, wait_healthy
from edgesplit.sse import data_events
from edgesplit.tools.linkemu import LinkEmulator


@dataclass
class Deployment:
    edge_url: str
    cloud_url: str  # direct, not through the emulator
    link: LinkEmulator
    admin_token: str
    edge_pid: int = 0
    cloud_pid: int = 0

    def admin(self, path: str) -> dict:
        r = httpx.get(self.edge_url + path, headers={"authorization": f"Bearer {self.admin_token}"}, timeout=30)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def plan(self) -> dict:
        return self.admin("/admin/plan")

    def post_plan(self, body: dict) -> dict:
        """POST /admin/plan: a plan by hand (`cut`, `codec`, `head`) or a search (`search: true`)."""
        r = httpx.post(self.edge_url + "/admin/plan", json=body, timeout=600,
                       headers={"authorization": f"Bearer {self.admin_token}"})
        if r.status_code != 200:
            raise RuntimeError(f"POST /admin/plan {body}: {r.status_code} {r.text[:300]}")
        return r.json()  # type: ignore[no-any-return]


@contextmanager
def deployment(model_dir: Path, edge_args: list[str], work_dir: Path, bandwidth_bps: float, rtt_ms: float,
               cloud_args: list[str] | None = None, admin_token: str = "scenario-admin-token",
               env: dict[str, str] | None = None, edge_cpus: set[int] | None = None,
               cloud_cpus: set[int] | None = None) -> Iterator[Deployment]:
    """Cloud process, link emulator in front of it, edge process behind the emulator; torn down at the end.

    `edge_cpus` and `cloud_cpus` pin each tier to its own cores, so they do not compete as one machine.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    cloud_port, edge_port = free_port(), free_port()
    with ExitStack() as stack:
        cloud = stack.enter_context(serve("cloud", ["--model", str(model_dir), *(cloud_args or [])], cloud_port,
                                          work_dir / "cloud.log", env=env, cpus=cloud_cpus))
        wait_healthy(f"http://127.0.0.1:{cloud_port}/health", cloud)
        link = LinkEmulator(cloud_port, bandwidth_bps, rtt_ms)
        emulated = stack.enter_context(link)
        edge_env = {**(env or {}), "EDGE_ADMIN_TOKEN": admin_token}
        edge = stack.enter_context(serve("edge", ["--model", str(model_dir), "--cloud", f"http://127.0.0.1:{emulated}",
                                                  *edge_args], edge_port, work_dir / "edge.log", env=edge_env,
                                           cpus=edge_cpus))
        wait_healthy(f"http://127.0.0.1:{edge_port}/health", edge, timeout_s=300)
        yield Deployment(f"http://127.0.0.1:{edge_port}", f"http://127.0.0.1:{cloud_port}", link, admin_token,
                         edge.pid, cloud.pid)


@dataclass
class Completed:
    """One streamed request as the client saw it."""

    prompt: str
    started_s: float  # time.monotonic()
    chunk_s: list[float] = field(default_factory=list)  # arrival of each text chunk
    text: str = ""
    cut: list[int] | None = None
    tokens: int = 0  # completion tokens, from the usage chunk
    status: int = 0
    error: str | None = None

    @property
    def ended_s(self) -> float:
        return self.chunk_s[-1] if self.chunk_s else self.started_s

    @property
    def time_per_output_token_s(self) -> float | None:
        """First chunk to last, over the tokens after the first; None for a request of one token or none."""
        if self.tokens < 2 or not self.chunk_s:
            return None
        return (self.chunk_s[-1] - self.chunk_s[0]) / (self.tokens - 1)


def stream_once(client: httpx.Client, url: str, prompt: str, max_tokens: int) -> Completed:
    """One streaming completion (greedy), with usage and edgesplit's plan figures in the last chunk."""
    done = Completed(prompt, time.monotonic())
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    try:
        with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            done.status = response.status_code
            if response.status_code != 200:
                done.error = response.read().decode(errors="replace")[:300]
                return done
            for event in data_events(response.iter_lines()):
                if event is None:
                    continue
                if "error" in event:
                    done.error = event["error"]["message"]
                elif event.get("choices"):
                    if piece := event["choices"][0].get("text"):
                        done.chunk_s.append(time.monotonic())
                        done.text += piece
                elif "edgesplit" in event:
                    done.cut = event["edgesplit"]["cut"]
                    done.tokens = event["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:  # recorded, so a test or benchmark can count it as a failure
        done.error = f"{type(exc).__name__}: {exc}"
    return done


class Traffic:
    """`clients` threads streaming completions back to back until `stop()`; prompts taken in turn."""

    def __init__(self, url: str, prompts: list[str], max_tokens: int, clients: int = 2) -> None:
        self.url, self.prompts, self.max_tokens = url, prompts, max_tokens
        self.results: list[Completed] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        with httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0)) as client:
            i = index
            while not self._stop.is_set():
                done = stream_once(client, self.url, self.prompts[i % len(self.prompts)], self.max_tokens)
                with self._lock:
                    self.results.append(done)
                i += len(self._threads)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=180)


def wait_for(condition: object, timeout_s: float, every_s: float = 0.2) -> float | None:
    """Poll `condition()` until true; the seconds it took, or None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(every_s)
    return None

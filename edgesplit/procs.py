"""Starting the two tiers as real processes on loopback (demo, benchmarks, end-to-end tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Poll `url` until it answers 200 and is not `degraded` (an edge whose cloud is not answering yet serves
    edge-only); fail early if the process dies."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was healthy")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200 and _status(response) != "degraded":
                return
            last = response.text[:200]
        except httpx.TransportError as exc:  # not listening yet
            last = str(exc)
        time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f} s: {last}")


def replica_healths(url: str, want: int, timeout_s: float = 120.0) -> dict[str, dict]:
    """Replica id -> its `/health` answer (pid, own address) from a replicated cloud (`serve cloud --ray`), polled
    through its front door (each poll reaches any replica) until `want` replicas have answered."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only replicas {list(seen)} answered within {timeout_s:.0f} s")
        try:
            health = httpx.get(f"{url}/health", timeout=5).json()
            seen[health["replica"]] = health
        except (httpx.TransportError, KeyError, ValueError):  # not up yet, or a cloud of one (no replica field)
            time.sleep(0.1)
    return seen


def _status(response: httpx.Response) -> str | None:
    """The `status` field of a health answer (None when it has none)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("status") if isinstance(body, dict) else None


@contextmanager
def serve(tier: str, args: list[str], port: int, log_path: Path | None = None,
          env: dict[str, str] | None = None, cpus: set[int] | None = None) -> Iterator[subprocess.Popen]:
    """Run `edgesplit serve <tier> ... --port P` until the block ends; its output goes to `log_path`.

    `cpus` pins the process to those cores, so two tiers on one machine stand for two machines.
    """
    cmd = [sys.executable, "-m", "edgesplit.cli", "serve", tier, *args, "--port", str(port)]
    with serve_command(cmd, log_path, env, cpus) as proc:
        yield proc


@contextmanager
def serve_command(cmd: list[str], log_path: Path | None = None, env: dict[str, str] | None = None,
                  cpus: set[int] | None = None, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """Run the server `cmd` until the block ends (SIGTERM, then SIGKILL after 15 s); output to `log_path`."""
    out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115  # closed below
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            preexec_fn=pin, cwd=cwd)  # noqa: PLW1509  # runs only the affinity call
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            out.close()  # type: ignore[union-attr]

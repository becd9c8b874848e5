"""A replica's own door: the replica's app served on a port of its own, so a session's frames after the first
skip Ray's HTTP proxy.

Through Ray Serve's proxy one request costs about 10-15 ms on this 2-core machine (a probe's round trip: 1.0 ms
to a plain cloud, 10.5 ms through the proxy, 15 ms with Ray's throughput-optimised flags; `bench/scaleout.py`),
paid on every decode step. So a session's first frame goes through the proxy, whose router picks the replica
(`cloud_service.ray_router`), and the replica's answer names its own address (`REPLICA_URL_HEADER`); the edge
sends the session's later frames, and its end, straight there. The listener serves the same app object (same
engine, auth, limits, metrics), like Ray Serve's own "direct ingress", which in Ray 2.60 is behind experimental
flags and does not tell a replica its port. Replica loss is seen by the edge as a refused connection there: it
replays the session through the proxy (`edge_service.cloud_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from cloud_service.settings import CloudSettings
from splitcore.channel import TAG_BYTES
from splitcore.http import header_timeout_protocol

log = logging.getLogger(__name__)


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals alone: the replica's process (Ray's worker) owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class ReplicaIdentity:
    """Who a replica app is: its name (Ray Serve's replica id), and where its own listener binds (`host`; None:
    none) and what address it gives edges (`advertise`: the node's address when `host` is a wildcard)."""

    name: str
    host: str | None = None
    advertise: str | None = None


class DirectListener:
    """`app` on `host`:`port` (0: any free port) in the running event loop, without a lifespan of its own (the
    app's lifespan is the replica's)."""

    def __init__(self, app: ASGIApp, settings: CloudSettings, host: str, port: int = 0) -> None:
        self.server = _QuietServer(uvicorn.Config(
            app, host=host, port=port, lifespan="off", log_config=None, access_log=False,
            http=header_timeout_protocol(settings.header_timeout_s), ws_max_size=settings.max_frame_bytes + TAG_BYTES))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Start listening; the port it listens on."""
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():  # it could not bind: the error is the task's
                self._task.result()
                raise RuntimeError("the replica's listener stopped before it started")
            await asyncio.sleep(0.01)
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task

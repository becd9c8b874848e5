"""A userspace TCP proxy that emulates a link: bandwidth and delay per direction, changeable while running.

`tc netem` is missing from this kernel, so delay is added here: each chunk leaves no earlier than the
link has serialised the bytes before it (`bytes * 8 / bandwidth`) and arrives half the round-trip time
later. The bandwidth is the link's, shared by every connection through it (one queue per direction), as
several streams over one uplink share it. Runs its own event loop in a thread; listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import threading
import time

TIMER_GRANULARITY_S = 0.001  # epoll waits in whole milliseconds (rounded up)


async def _until(at: float) -> None:
    """Wake at monotonic time `at`: the event loop's timer to within a millisecond, then yielding until it.

    A plain `asyncio.sleep` ends on the next whole millisecond, which quantised a 1 Gbit/s link's transfers
    (a 77 kB frame takes 0.6 ms) to the timer rather than to the bytes."""
    if (rest := at - time.monotonic()) > TIMER_GRANULARITY_S:
        await asyncio.sleep(rest - TIMER_GRANULARITY_S)
    while time.monotonic() < at:
        await asyncio.sleep(0)


class LinkEmulator:
    """`with LinkEmulator(target_port, bandwidth_bps, rtt_ms) as port:` proxies 127.0.0.1:port to the target."""

    def __init__(self, target_port: int, bandwidth_bps: float, rtt_ms: float, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.bandwidth_bps, self.rtt_ms = bandwidth_bps, rtt_ms
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._free_at = {"up": 0.0, "down": 0.0}  # when each direction finishes serialising what it accepted

    def set(self, bandwidth_bps: float | None = None, rtt_ms: float | None = None) -> None:
        """Change the link; applies to every chunk sent from now on."""
        if bandwidth_bps is not None:
            self.bandwidth_bps = bandwidth_bps
        if rtt_ms is not None:
            self.rtt_ms = rtt_ms

    def __enter__(self) -> int:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        await asyncio.gather(self._pipe(client_r, server_w, "up"), self._pipe(server_r, client_w, "down"),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, writer))
        try:
            while chunk := await reader.read(65536):
                now = time.monotonic()
                free_at = max(now, self._free_at[direction]) + len(chunk) * 8 / self.bandwidth_bps
                self._free_at[direction] = free_at  # one event loop: no lock needed
                await queue.put((free_at + self.rtt_ms / 2000, chunk))
        finally:
            await queue.put((0.0, b""))
            await deliver

    @staticmethod
    async def _deliver(queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                at, chunk = await queue.get()
                if not chunk:
                    break
                await _until(at)
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()

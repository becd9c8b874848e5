"""The link emulator adds the delay and bandwidth it is set to, and can change them while running."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi import FastAPI, Request, Response

from edgesplit.tools.linkemu import LinkEmulator
from tests.servers import LoopbackServer


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.post("/sink")
    async def sink(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    return app


def timed_post(client: httpx.Client, url: str, nbytes: int) -> float:
    started = time.perf_counter()
    client.post(url, content=b"\0" * nbytes).raise_for_status()
    return (time.perf_counter() - started) * 1000


def test_delay_and_bandwidth_follow_the_settings() -> None:
    with LoopbackServer(echo_app()) as url, LinkEmulator(int(url.rsplit(":", 1)[1]), 8e6, rtt_ms=60) as port, \
            httpx.Client() as client:
        target = f"http://127.0.0.1:{port}/sink"
        timed_post(client, target, 10)  # open the connection
        assert 60 <= min(timed_post(client, target, 10) for _ in range(3)) < 90
        assert 250 <= timed_post(client, target, 200_000) < 330  # 1.6 Mbit at 8 Mbit/s: 200 ms more


def test_the_link_can_change_while_a_connection_is_open() -> None:
    with LoopbackServer(echo_app()) as url:
        link = LinkEmulator(int(url.rsplit(":", 1)[1]), bandwidth_bps=8e6, rtt_ms=60)
        with link as port, httpx.Client() as client:
            target = f"http://127.0.0.1:{port}/sink"
            assert timed_post(client, target, 10) >= 60
            link.set(rtt_ms=10)
            assert min(timed_post(client, target, 10) for _ in range(3)) < 35


def test_connections_through_one_link_share_its_bandwidth() -> None:
    """Four uploads at once on four connections take about four times as long as one: one link, not four."""
    with LoopbackServer(echo_app()) as url, LinkEmulator(int(url.rsplit(":", 1)[1]), 8e6, rtt_ms=10) as port:
        target = f"http://127.0.0.1:{port}/sink"
        clients = [httpx.Client() for _ in range(4)]
        for client in clients:
            timed_post(client, target, 10)  # open each connection
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda c: timed_post(c, target, 200_000), clients))
        elapsed_ms = (time.perf_counter() - started) * 1000
        for client in clients:
            client.close()
    assert 800 <= elapsed_ms < 1000  # 4 x 1.6 Mbit at 8 Mbit/s, plus the round trip

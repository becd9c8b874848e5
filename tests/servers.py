"""Real uvicorn servers on loopback, run in a thread of the test process; both tiers at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cloud_service.app import create_app as create_cloud
from cloud_service.settings import CloudSettings
from edge_service.app import create_app as create_edge
from edge_service.settings import EdgeSettings
from edgesplit.procs import free_port
from edgesplit.sse import data_events
from splitcore.http import header_timeout_protocol
from splitcore.loading import LoadedModel


class LoopbackServer:
    """`with LoopbackServer(app) as url:` serves `app` on 127.0.0.1 until the block ends."""

    def __init__(self, app: FastAPI, http: float | None = None) -> None:
        """`http`: a header timeout in seconds, served as the real tiers serve it (`header_timeout_protocol`)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        protocol: Any = header_timeout_protocol(http) if http is not None else "auto"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, http=protocol))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def stream_completion(url: str, body: dict, on_chunk: Callable[[int], None] = lambda i: None,
                      timeout_s: float = 60) -> dict:
    """Stream one completion (`body` with `"stream": true`); call `on_chunk(i)` after the i-th text chunk; gather
    the text, each chunk's arrival (monotonic), whether `[DONE]` came, an error event, the `edgesplit` figures."""
    out: dict = {"text": "", "times": [], "done": False, "error": None, "edgesplit": None}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=timeout_s) as r:
        assert r.status_code == 200, r.read()
        for event in data_events(r.iter_lines()):
            if event is None:
                out["done"] = True
            elif "error" in event:
                out["error"] = event["error"]
            elif event.get("choices") and event["choices"][0]["text"]:
                out["text"] += event["choices"][0]["text"]
                out["times"].append(time.monotonic())
                on_chunk(len(out["times"]))
            elif "edgesplit" in event:
                out["edgesplit"] = event["edgesplit"]
    return out


def metric_samples(url: str) -> dict[str, list[Sample]]:
    """Each sample name on `url`'s /metrics with its samples (labels and value), as Prometheus parses them."""
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


@dataclass(frozen=True)
class Tiers:
    """A running cloud and an edge pointed at it."""

    edge_url: str
    cloud_url: str
    edge_app: FastAPI
    cloud_app: FastAPI


@contextmanager
def edge_and_cloud(loaded: LoadedModel, cloud: CloudSettings | None = None, **edge: Any) -> Iterator[Tiers]:
    """A real cloud and a real edge serving `loaded` on loopback; `edge` are the edge's settings (its cloud_url is
    the cloud's)."""
    cloud_app = create_cloud(cloud or CloudSettings(), loaded)
    with LoopbackServer(cloud_app) as cloud_url:
        edge_app = create_edge(EdgeSettings(cloud_url=cloud_url, **edge), loaded)
        with LoopbackServer(edge_app) as edge_url:
            yield Tiers(edge_url, cloud_url, edge_app, cloud_app)


"""An edge that served several local generations at once gives their running batch's storage back once idle."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from edge_service.app import create_app
from edge_service.settings import EdgeSettings
from splitcore.loading import LoadedModel
from tests.servers import LoopbackServer
from tests.waiting import poll


def test_an_idle_edge_drops_the_running_batch_of_generations_that_have_ended(models: dict[str, LoadedModel]) -> None:
    app = create_app(EdgeSettings(cut="edge"), models["gpt2"])
    with LoopbackServer(app) as url, ThreadPoolExecutor(4) as pool:
        def complete(i: int) -> int:
            body = {"prompt": f"prompt {i}", "max_tokens": 12, "temperature": 0}
            return httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code
        assert list(pool.map(complete, range(4))) == [200] * 4
        batcher = app.state.runtime.orchestrator.runners.batcher
        sizes = app.state.runtime.metrics.batches.size.collect()[0].samples
        rows = {s.name: s.value for s in sizes if s.name.endswith(("_sum", "_count"))}
        assert rows["edgesplit_edge_batch_size_sum"] > rows["edgesplit_edge_batch_size_count"]  # they batched
        held = poll(lambda: batcher._running, lambda running: not running, 10)  # noqa: SLF001 (the edge looks every 2 s)
        assert not held, "the ended generations' running batch is still held"

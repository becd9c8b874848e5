"""What one shard request costs the cloud besides its blocks, measured through the real app in this process.

Two figures, because a request costs differently alone and in a crowd (`Profile.request_ms`,
`Profile.request_busy_ms`):

- **Alone.** Decode requests of one cloud-only session, one after another through the app from a task on its own
  event loop: their time less the batcher's rounds (timed in the same run, so the compute's noise stays out of
  the figure): the middleware, the frame codec, the session store, the sampler and the batcher's hand-off.
- **Busy.** `sessions` cloud-only sessions send their decode steps at once, from tasks on the app's own event loop,
  so rounds hold many of them: the wall time less the rounds, per request. This is what each request adds to a
  batched round, where its compute is shared.

Both leave out uvicorn's HTTP parsing (a few percent of a request, py-spy on `bench/batching.py`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import torch
from starlette.testclient import TestClient

from cloud_service.app import create_app
from cloud_service.settings import CloudSettings
from profiling.profile import BATCH_CONTEXT, BUSY_SESSIONS, Profile
from splitcore.codec import Dtype
from splitcore.loading import LoadedModel
from splitcore.ranges import LayerRange
from splitcore.schema import SessionMeta
from splitcore.wire import MEDIA_TYPE, Flags, FrameCodec

REQUESTS = 40  # timed decode requests of the lone session (the crowd's sessions send half as many each)
WARM_UP = 3  # a session's prompt and two decode steps before the timing starts

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _post(app: App, path: str, body: bytes) -> bytes:
    """One POST straight through the ASGI app (no HTTP parsing); the answer's body.

    Raises:
        RuntimeError: the app answered other than 200.
    """
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    pending, status, chunks = [body], [0], list[bytes]()

    async def receive() -> dict:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        await asyncio.Event().wait()  # the client never goes away
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
    await app(scope, receive, send)
    if status[0] != 200:
        raise RuntimeError(f"the cloud app answered {status[0]}: {b''.join(chunks)[:200]!r}")
    return b"".join(chunks)


class _Session:
    """A cloud-only session (token ids in, a sampled token out) over the whole model."""

    def __init__(self, loaded: LoadedModel, seed: int) -> None:
        m = loaded.layered
        self.layers, self.id, self.codec = LayerRange(start=0, end=m.num_layers), uuid.uuid4(), FrameCodec(Dtype.INT32)
        self.meta = SessionMeta(codec="fp32", weights_digest=loaded.digests.part(self.layers, embed=True, head=True))
        self.next = torch.randint(0, m.vocab_size, (BATCH_CONTEXT,), generator=torch.Generator().manual_seed(seed))
        self.position = 0

    def frame(self) -> bytes:
        return self.codec.encode(self.id, self.position, self.layers, self.next, Flags.HEAD,
                                 meta=self.meta.model_dump_json().encode() if self.position == 0 else b"")

    def answered(self, body: bytes) -> None:
        self.position += len(self.next)
        self.next = self.codec.decode(body).tensor.reshape(-1)[-1:].long()


def with_request_cost(profile: Profile, loaded: LoadedModel, settings: CloudSettings | None = None) -> Profile:
    """`profile` with the service's own cost per request measured (`measure_request_ms`); unchanged (0: not
    measured) when the model's context cannot hold a session's prompt and its timed steps."""
    if loaded.layered.max_positions < BATCH_CONTEXT + WARM_UP + REQUESTS:
        return profile
    alone, busy = measure_request_ms(loaded, settings=settings)
    return profile.model_copy(update={"request_ms": alone, "request_busy_ms": busy})


def measure_request_ms(loaded: LoadedModel, requests: int = REQUESTS, sessions: int = BUSY_SESSIONS,
                       settings: CloudSettings | None = None) -> tuple[float, float]:
    """(alone, busy): a decode request's own cost in ms besides its batcher round, alone and among `sessions`
    sessions whose steps arrive at once. `loaded` must hold every block."""
    settings = (settings or CloudSettings()).model_copy(
        update={"auth_token": None, "edge_tokens": None, "profile": None, "layers": None,
                "max_sessions_per_caller": max(64, 2 * sessions)})
    app = create_app(settings, loaded)
    rounds: list[float] = []  # each batcher round's time: the compute, taken off what the requests took

    async def step(s: _Session) -> None:
        s.answered(await _post(app, "/v1/shard/forward", s.frame()))

    async def steps(s: _Session, n: int) -> None:
        for _ in range(n):
            await step(s)

    async def measure() -> tuple[float, float]:
        batcher = app.state.engine.runners.batcher
        assert batcher is not None, "the cloud batches torch steps"
        run_round = batcher.run_round

        def timed_round() -> int:
            started = time.perf_counter()
            try:
                return run_round()
            finally:
                rounds.append((time.perf_counter() - started) * 1000)
        batcher.run_round = timed_round  # this app is the measurement's own
        alone = _Session(loaded, 0)
        await steps(alone, WARM_UP)  # its prompt; two warm-up steps
        rounds.clear()
        started = time.perf_counter()
        await steps(alone, requests)
        lone = ((time.perf_counter() - started) * 1000 - sum(rounds)) / requests
        group = [_Session(loaded, seed) for seed in range(1, sessions + 1)]
        await asyncio.gather(*(steps(s, WARM_UP) for s in group))  # prompts; then every session joins the running batch
        rounds.clear()
        started = time.perf_counter()
        await asyncio.gather(*(steps(s, requests // 2) for s in group))
        return lone, ((time.perf_counter() - started) * 1000 - sum(rounds)) / (sessions * (requests // 2))

    with TestClient(app, client=("127.0.0.1", 1)) as client:  # runs the app's lifespan; its loop runs `measure`
        assert client.portal is not None
        lone, busy = client.portal.call(measure)
    return max(0.0, lone), max(0.0, busy)

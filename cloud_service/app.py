"""The cloud service's HTTP surface: thin handlers over `ShardEngine` and `SessionStore`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator

import torch
from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.concurrency import run_in_threadpool

from cloud_service.channel import FrameService, serve_channel
from cloud_service.direct import DirectListener, ReplicaIdentity
from cloud_service.engine import ShardEngine
from cloud_service.identity import EdgeAuth, EdgeTokens
from cloud_service.metrics import CloudMetrics
from cloud_service.sessions import SessionStore
from cloud_service.settings import CloudSettings
from splitcore.backends import Runners
from splitcore.batching import BatchObserver
from splitcore.channel import CHANNEL_PATH
from splitcore.defaults import usable_cores
from splitcore.errors import PlanError, SessionNotFoundError
from splitcore.http import AnswerHeaders, BodyLimit, install_error_handlers
from splitcore.loading import LoadedModel, load_checkpoint
from splitcore.logs import RequestIds
from splitcore.memory import release_forever
from splitcore.metrics import install_metrics_route
from splitcore.plan import parse_cut
from splitcore.ranges import LayerRange
from splitcore.replicas import REPLICA_HEADER, REPLICA_URL_HEADER
from splitcore.wire import MEDIA_TYPE, short_id

log = logging.getLogger(__name__)


def build_engine(settings: CloudSettings, loaded: LoadedModel | None = None,
                 observer: BatchObserver | None = None) -> ShardEngine:
    """Load the model (unless given) and keep only the blocks this cloud is configured to hold.

    A model passed in is owned from then on: the blocks outside `settings.layers` are freed in place.
    """
    loaded = settings.named(loaded or load_checkpoint(settings.model_dir))
    held = None
    if settings.layers:
        held = parse_cut(settings.layers, loaded.layered.num_layers).cloud_layers
        loaded.layered.drop_blocks_outside(held)
    store = SessionStore(ttl_s=settings.session_ttl_s, max_sessions=settings.max_sessions,
                         max_cache_bytes=settings.max_cache_bytes,
                         max_per_owner=settings.max_sessions_per_caller)
    runners = Runners(loaded.layered, default=settings.backend, onnx_dir=settings.onnx_dir,
                      batching=settings.batch_limits(), observer=observer)
    return ShardEngine(loaded, store, held=held, max_concurrent_steps=settings.max_concurrent_steps or usable_cores(),
                       runners=runners, batch_wait_s=settings.batch_wait_ms / 1000)


def create_app(settings: CloudSettings, loaded: LoadedModel | None = None,
               replica: ReplicaIdentity | None = None) -> FastAPI:
    """The cloud app; `loaded` lets tests pass an in-memory model instead of a checkpoint directory.

    `replica` makes this app one replica of several (`cloud_service.ray_app`): its answers carry its name (and
    the address of its own listener, `cloud_service.direct`, when it has one), and it offers the frame channel on
    that listener only (through the front door a channel would carry all of an edge's sessions to one replica;
    each session's frames are routed to its replica instead).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        app.state.engine = await run_in_threadpool(build_engine, settings, loaded, metrics.batches.observe)
        metrics.watch(app.state.engine)
        store = app.state.engine.store
        tasks = [asyncio.create_task(_sweep_forever(store, app.state.engine)),
                 asyncio.create_task(release_forever(lambda: store.freed, store.stepping))]
        listener = None
        if replica is not None and replica.host is not None:
            listener = DirectListener(app, settings, replica.host)
            app.state.own_port = await listener.start()
            answer_headers[REPLICA_URL_HEADER] = f"http://{replica.advertise or replica.host}:{app.state.own_port}"
            log.info("replica %s also listens at %s", replica.name, answer_headers[REPLICA_URL_HEADER])
        yield
        if listener is not None:
            await listener.stop()
        for task in tasks:
            task.cancel()

    metrics = CloudMetrics()
    frames = FrameService(metrics, settings.max_frame_bytes)
    tokens = EdgeTokens.parse(settings.edge_tokens, settings.auth_token)
    app = FastAPI(title="edgesplit cloud", lifespan=lifespan)
    install_error_handlers(app, settings.log_refused_bodies)
    install_metrics_route(app, metrics.registry,
                          lambda: app.state.engine.loaded.name if hasattr(app.state, "engine") else "")
    app.add_middleware(BodyLimit, max_bytes=settings.max_frame_bytes, idle_s=settings.body_idle_timeout_s,
                       total_s=settings.body_timeout_s)  # every route, JSON ones too
    app.add_middleware(EdgeAuth, tokens=tokens)  # who calls is known before any body is read
    app.add_middleware(RequestIds)  # outermost: every line a request logs carries its id
    replica_fields = {"replica": replica.name, "pid": os.getpid()} if replica is not None else {}
    answer_headers = {REPLICA_HEADER: replica.name} if replica is not None else {}  # and its address, once open
    if replica is not None:
        app.add_middleware(AnswerHeaders, headers=answer_headers)

    frame_body = {"requestBody": {"required": True, "content": {
        MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

    @app.post("/v1/shard/forward", response_class=Response, openapi_extra=frame_body,
              responses={200: {"content": {MEDIA_TYPE: {}}, "description": "answer frame"}})
    async def forward(request: Request) -> Response:
        """Run a frame's blocks for its session; body and answer are binary frames (`splitcore.wire`)."""
        answer = await frames.answer(request.app.state.engine, await request.body(), request.state.edge)
        return Response(answer, media_type=MEDIA_TYPE)

    @app.websocket(CHANNEL_PATH)
    async def channel(ws: WebSocket) -> None:
        """The same frames as `/v1/shard/forward`, tagged, over one connection per edge (`splitcore.channel`).

        A replica offers it on its own listener only: through the front door (Ray's proxy) a channel would carry
        every session of an edge to whichever replica the proxy picked."""
        if replica is not None and ws.scope.get("server", ("", 0))[1] != getattr(ws.app.state, "own_port", None):
            await ws.close()  # before the handshake: 403, and the edge sends frames over HTTP
            return
        await serve_channel(ws, lambda: ws.app.state.engine, frames)

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    async def end_session(session_id: uuid.UUID, request: Request) -> Response:
        """Free a session's KV cache; only the edge that opened it may."""
        if not request.app.state.engine.end(session_id, request.state.edge):
            raise SessionNotFoundError(f"session {short_id(session_id)} is not live")
        return Response(status_code=204)

    @app.get("/v1/info")
    async def info(request: Request) -> dict:
        """What this cloud holds, so an edge can check it serves the same model."""
        engine: ShardEngine = request.app.state.engine
        m = engine.model
        return {"model": engine.loaded.name, "fingerprint": engine.loaded.fingerprint, "model_type": m.model_type,
                "num_layers": m.num_layers, "hidden_size": m.hidden_size, "vocab_size": m.vocab_size,
                "held_layers": [engine.held.start, engine.held.end], "frame_channel": replica is None,
                **replica_fields}

    @app.post("/v1/layers")
    async def hold_layers(wanted: LayerRange, request: Request) -> dict:
        """Load blocks `[start, end)` (and any between them and those held) before an edge switches to a plan."""
        engine: ShardEngine = request.app.state.engine
        if wanted.end > engine.model.num_layers:
            raise PlanError(f"this model has {engine.model.num_layers} blocks; asked for {wanted}")
        budget = settings.max_weights_bytes
        held = await run_in_threadpool(engine.hold, wanted, lambda: load_checkpoint(settings.model_dir), budget)
        return {"held_layers": [held.start, held.end]}

    @app.post("/v1/probe", status_code=204)
    async def probe(request: Request) -> Response:
        """Swallow a body and answer empty: the edge times it to estimate bandwidth and RTT."""
        metrics.probe_bytes.inc(len(await request.body()))
        return Response(status_code=204)

    @app.get("/profile")
    async def profile(request: Request) -> Response:
        """This tier's measured profile, so the edge can plan with the cloud's real costs."""
        engine: ShardEngine = request.app.state.engine
        if getattr(request.app.state, "profile_json", None) is None:
            request.app.state.profile_json = await run_in_threadpool(_load_or_measure_profile, settings, engine)
        return Response(request.app.state.profile_json, media_type="application/json")

    @app.get("/ready")
    @app.get("/health")
    async def health(request: Request) -> dict:
        """Liveness and load: live sessions and their cache memory."""
        store = request.app.state.engine.store
        engine: ShardEngine = request.app.state.engine
        return {"status": "ok", "sessions": len(store), "cache_bytes": store.cache_bytes, "evictions": store.evictions,
                "batch_size": engine.batch_size, **replica_fields,
                **({"url": answer_headers[REPLICA_URL_HEADER]} if REPLICA_URL_HEADER in answer_headers else {})}

    return app


def _load_or_measure_profile(settings: CloudSettings, engine: ShardEngine) -> str:
    from profiling.profile import Profile
    from profiling.profiler import measure_profile

    if settings.profile is not None:
        profile = Profile.load(settings.profile)
        if profile.fingerprint != engine.loaded.fingerprint:
            raise PlanError(f"{settings.profile} profiles model {profile.model_name!r}, not the one loaded")
    elif len(engine.held) < engine.model.num_layers:
        raise PlanError(f"this cloud holds only blocks {engine.held}; start it with --profile FILE measured with "
                        "every block (edgesplit profile)")
    else:
        from cloud_service.selfcost import with_request_cost

        profile = measure_profile(engine.loaded, device_name="cloud", repeats=3, onnx_dir=settings.onnx_dir)
        profile = with_request_cost(profile, engine.loaded, settings)
    return profile.model_dump_json()


async def _sweep_forever(store: SessionStore, engine: ShardEngine) -> None:
    while True:
        await asyncio.sleep(max(1.0, store.ttl_s / 4))
        batcher = engine.runners.batcher
        if batcher is not None and batcher.waiting == 0:  # on the loop that runs the rounds: none is running
            batcher.drop_idle()
        if dropped := store.sweep():
            log.info("dropped %d expired sessions", dropped)

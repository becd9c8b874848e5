"""The edge service's HTTP surface: OpenAI-compatible completions, chat, models, health.

Handlers validate, delegate to `Responder`/`Orchestrator`, and return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from edge_service import admin
from edge_service.admin_auth import AdminGuard
from edge_service.metrics import EdgeMetrics
from edge_service.orchestrator import GenerationRequest
from edge_service.prompts import check_text_size, render_chat
from edge_service.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    ModelCard,
    ModelList,
    _Common,
)
from edge_service.responses import Endpoint, Responder
from edge_service.runtime import EdgeRuntime
from edge_service.settings import EdgeSettings
from splitcore.errors import CapacityError, EdgesplitError, ModelNotFoundError, UserError
from splitcore.http import BodyLimit, error_response, install_error_handlers
from splitcore.loading import LoadedModel
from splitcore.logs import RequestIds, request_id
from splitcore.memory import release_forever
from splitcore.metrics import install_metrics_route
from splitcore.schema import ErrorResponse

log = logging.getLogger(__name__)
PLAIN_CHAT_STOP = "\nUser:"  # the plain chat template's next turn: stop before the model writes it


def _drop_idle_batches(runtime: EdgeRuntime) -> int:
    """Free the edge batcher's running batches whose sessions have all ended (as the cloud's sweep does): a burst
    of local generations would otherwise keep their rows reserved until that range decodes again."""
    batcher = runtime.orchestrator.runners.batcher
    return batcher.drop_idle() if batcher is not None else 0


def create_app(settings: EdgeSettings, loaded: LoadedModel | None = None) -> FastAPI:
    """The edge app; `loaded` lets tests pass an in-memory model instead of a checkpoint directory."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        runtime = app.state.runtime = await run_in_threadpool(EdgeRuntime.build, settings, loaded, metrics)
        tasks = [asyncio.create_task(_probe_when_idle(runtime)), asyncio.create_task(_replan_forever(runtime)),
                 asyncio.create_task(release_forever(lambda: metrics.ended, lambda: metrics.in_flight > 0,
                                                     drop=lambda: _drop_idle_batches(runtime)))]
        yield
        for task in tasks:
            task.cancel()
        runtime.close()

    metrics = EdgeMetrics()
    app = FastAPI(title="edgesplit edge", lifespan=lifespan)
    install_error_handlers(app, settings.log_refused_bodies)
    install_metrics_route(app, metrics.registry, lambda: _served_name(app))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, idle_s=settings.body_idle_timeout_s,
                       total_s=settings.body_timeout_s)
    app.add_middleware(RequestIds)  # outermost: every line a request logs carries its id
    app.state.admin_guard = AdminGuard(settings.admin_token, settings.admin_session_s)
    app.include_router(admin.router)
    app.include_router(admin.guarded)

    @app.post("/v1/completions", response_model=None,
              responses=_responses(CompletionResponse, CompletionStreamResponse))
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """OpenAI-compatible text completion; `stream: true` answers with server-sent events."""
        runtime: EdgeRuntime = request.app.state.runtime
        tokenizer = runtime.orchestrator.tokenizer
        body.check_supported()
        if isinstance(body.prompt, str) or isinstance(body.prompt[0], str):
            text = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
            check_text_size([text], runtime.settings.max_prompt_bytes)
            prompt_ids = await run_in_threadpool(tokenizer.encode, text, add_special_tokens=False)
        else:
            prompt_ids = list(body.prompt)  # type: ignore[arg-type]
            text = str(await run_in_threadpool(tokenizer.decode, prompt_ids)) if body.echo else ""
        return await _generate(runtime, body, prompt_ids, body.max_tokens, body.stop_list, "completion", request,
                               echo=text if body.echo else "")

    @app.post("/v1/chat/completions", response_model=None,
              responses=_responses(ChatCompletionResponse, ChatCompletionStreamResponse))
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """OpenAI-compatible chat completion; the tokenizer's chat template, or the plain one in `prompts`."""
        runtime: EdgeRuntime = request.app.state.runtime
        tokenizer = runtime.orchestrator.tokenizer
        body.check_supported()
        check_text_size([m.text for m in body.messages], runtime.settings.max_prompt_bytes)
        prompt_ids = await run_in_threadpool(render_chat, tokenizer, body.messages)
        stop = body.stop_list
        if not getattr(tokenizer, "chat_template", None):
            stop = [*stop, PLAIN_CHAT_STOP]
        return await _generate(runtime, body, prompt_ids, body.output_limit, stop, "chat", request)

    @app.get("/v1/models")
    async def models(request: Request) -> ModelList:
        """The one model this edge serves."""
        runtime: EdgeRuntime = request.app.state.runtime
        return ModelList(data=[ModelCard(id=runtime.loaded.name)])

    @app.get("/ready")
    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """200 `ok` when the model is loaded and the plan's cloud answers with the same model and its blocks;
        200 `degraded` when the cloud does not but fallback serves every request on the edge alone (slower, same
        tokens); 503 `unavailable` while the model loads, or when the cloud fails and fallback is off."""
        runtime: EdgeRuntime | None = getattr(request.app.state, "runtime", None)
        if runtime is None:
            return error_response(503, "model is loading", "unavailable")
        ok, detail = await run_in_threadpool(runtime.cloud_status)
        plan = runtime.orchestrator.plan
        status = "ok" if ok else "degraded" if runtime.settings.fallback else "unavailable"
        if status == "degraded":
            detail = f"degraded, serving edge-only: {detail}"
        body = {"status": status, "detail": detail, "model": runtime.loaded.name,
                "plan": plan.describe(), "cut": [plan.cut_a, plan.cut_b]}
        return JSONResponse(body, status_code=503 if status == "unavailable" else 200)

    return app


def _served_name(app: FastAPI) -> str:
    runtime: EdgeRuntime | None = getattr(app.state, "runtime", None)
    return runtime.loaded.name if runtime is not None else ""


async def _probe_when_idle(runtime: EdgeRuntime) -> None:
    """`--plan auto`: keep the link estimate fresh while no frame crosses the link (real exchanges teach it
    otherwise), without spending an idle device's link: every `probe_interval_s` while requests are being served
    (an edge-only plan must see the link recover to go back to a split), and while none are, a wait that doubles
    after each probe, up to `probe_max_interval_s`, and is at least what keeps the average under
    `probe_budget_bytes_per_s`. A static plan never probes (it has nothing to decide).

    The large probe is sized to take about 50 ms on the estimated link, so a slow link is not flooded.
    """
    from profiling.link_estimator import PROBE_SMALL, probe_link, probe_size

    settings, metrics = runtime.settings, runtime.metrics
    if not runtime.replanner.adaptive:
        return
    wait, ended = settings.probe_interval_s, metrics.ended
    while True:
        await asyncio.sleep(wait)
        serving = metrics.in_flight > 0 or metrics.ended != ended
        ended = metrics.ended
        if runtime.link.idle_for_s() < wait:  # frames crossed since: they keep the estimate fresh
            wait = settings.probe_interval_s
            continue
        large = probe_size(runtime.link.estimate().bandwidth_bps)
        try:
            await run_in_threadpool(probe_link, runtime.cloud.probe, runtime.link, 1, large)
        except EdgesplitError as exc:  # an unreachable cloud is reported by /health, not here
            log.debug("idle link probe failed: %s", exc)
        backed_off = max(2 * wait, (PROBE_SMALL + large) / settings.probe_budget_bytes_per_s)
        wait = settings.probe_interval_s if serving else min(settings.probe_max_interval_s, backed_off)


async def _replan_forever(runtime: EdgeRuntime) -> None:
    """Check the link against the plan every `replan_interval_s`; `EdgeRuntime.tick` decides."""
    while True:
        await asyncio.sleep(runtime.settings.replan_interval_s)
        try:
            await run_in_threadpool(runtime.tick)
        except EdgesplitError as exc:  # the cloud went away mid-search, or refused the blocks: try again later
            runtime.metrics.cloud_errors.labels(type(exc).__name__).inc()
            log.warning("re-planning failed: %s", exc)


def _responses(whole: type[BaseModel], chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a generation route: the whole body, the event stream's chunks, and the error shape."""
    stream = {"text/event-stream": {"schema": {
        "description": f"with stream: true, events 'data: <{chunk.__name__}>', then 'data: [DONE]'",
        **chunk.model_json_schema()}}}
    refusals = ((400, "a request this edge cannot serve, naming the field"), (404, "an unknown model"),
                (413, "a body over the limit"), (429, "every generation slot is busy"),
                (502, "the cloud failed and fallback is off"))
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": what} for status, what in refusals}
    return {200: {"model": whole, "content": stream}, **errors}


async def _generate(runtime: EdgeRuntime, body: _Common, prompt_ids: list[int], max_tokens: int | None,
                    stop: list[str], endpoint: Endpoint, http: Request, echo: str = "") -> Response:
    settings = runtime.settings
    if body.model is not None and body.model != runtime.loaded.name:
        raise ModelNotFoundError(f"model {body.model!r} is not served here; GET /v1/models lists "
                                   f"{runtime.loaded.name!r}")
    _check_lengths(runtime, prompt_ids, max_tokens)
    if runtime.metrics.in_flight >= settings.max_concurrent_requests:  # no await before the Responder counts it
        raise CapacityError(f"{runtime.metrics.in_flight} requests are running, this edge's limit; retry shortly")
    room = min(settings.max_output_tokens, runtime.max_positions - len(prompt_ids))
    vocab = runtime.loaded.layered.vocab_size
    if any(not 0 <= t < vocab for t in body.stop_token_ids or ()):
        raise UserError(f"stop_token_ids: token ids must be in [0, {vocab})", param="stop_token_ids")
    request = GenerationRequest(prompt_ids=prompt_ids, max_tokens=max_tokens or room, sampling=body.sampling,
                                stop=tuple(stop), request_id=request_id.get(), ignore_eos=body.ignore_eos,
                                min_tokens=body.min_tokens, stop_token_ids=tuple(body.stop_token_ids or ()),
                                logprobs=body.top_logprobs_asked)
    responder = Responder(runtime.orchestrator, runtime.loaded.name, endpoint, runtime.metrics, echo=echo,
                          continuous_usage=body.continuous_usage)
    started = time.perf_counter()
    if body.stream:
        events = await responder.stream(request, body.include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
    out = await responder.body(request, http.is_disconnected)
    log.info("request %s: %d tokens in %.0f ms", request.request_id, out.usage.completion_tokens,
             (time.perf_counter() - started) * 1000)
    return JSONResponse(out.model_dump())


def _check_lengths(runtime: EdgeRuntime, prompt_ids: list[int], max_tokens: int | None) -> None:
    settings = runtime.settings
    vocab = runtime.loaded.layered.vocab_size
    if not prompt_ids:
        raise UserError("prompt is empty")
    if any(not 0 <= t < vocab for t in prompt_ids):
        raise UserError(f"prompt token ids must be in [0, {vocab})")
    limit = min(settings.max_prompt_tokens, runtime.max_positions - 1)
    if len(prompt_ids) > limit:
        raise UserError(f"prompt is {len(prompt_ids)} tokens; the limit is {limit}")
    if max_tokens is not None and max_tokens > settings.max_output_tokens:
        raise UserError(f"max_tokens is {max_tokens}; the limit is {settings.max_output_tokens}")
    if max_tokens is not None and len(prompt_ids) + max_tokens > runtime.max_positions:
        raise UserError(f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds the model's "
                        f"{runtime.max_positions} positions")

"""The operator's surface on the edge: `/admin/*`, guarded by the admin token.

Credentials: `Authorization: Bearer <token>`, or the signed, expiring cookie `/admin/login` sets for the dashboard
(a browser cannot add a header when it opens a page); `admin_auth.AdminGuard` checks both. Without credentials:
401; wrong ones (answered after a growing delay), or no token configured: 403. Handlers are thin: the work is in
`Replanner` and `EdgeRuntime`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import Field, model_validator

from edge_service.admin_auth import COOKIE, AdminGuard
from edge_service.runtime import EdgeRuntime
from edge_service.settings import SPECULATE_PATTERN
from partitioner.costmodel import Workload
from profiling.link_estimator import Link
from splitcore.errors import (
    AuthenticationError,
    CloudUnavailableError,
    EdgesplitError,
    PermissionDeniedError,
    UserError,
)
from splitcore.plan import BackendName, CodecName, parse_cut
from splitcore.schema import StrictModel

_PAGES = Path(__file__).with_name("pages")


class SearchConstraints(StrictModel):
    edge_memory_mb: float | None = Field(default=None, gt=0, le=1e9, description="device memory budget, MiB")
    min_edge_layers: int | None = Field(default=None, ge=0, description="privacy: blocks kept on the device")


class PlanRequest(StrictModel):
    """Either a plan by hand (`cut`, with `head`, `codec`, `zstd_level`) or `search: true` (optionally on a given
    link, constraints or workload; `apply: false` only reports what the search would pick)."""

    cut: str | None = Field(default=None, description="A:B, A, 'edge' or 'cloud'")
    head: Literal["edge", "cloud"] = "edge"
    codec: CodecName = "int8"
    zstd_level: int = Field(default=1, ge=-7, le=22)
    edge_backend: BackendName | None = Field(default=None, description="runtime of the edge's blocks; None: its own")
    cloud_backend: BackendName | None = Field(default=None, description="runtime of the cloud's; None: its own")
    search: bool = False
    apply: bool = True
    bandwidth_bps: float | None = Field(default=None, gt=0, le=1e12, description="search on this link instead")
    rtt_ms: float | None = Field(default=None, ge=0, le=1e6)
    workload: str | None = Field(default=None, pattern=r"^\d+(:\d+){0,2}$", description="PROMPT:OUTPUT[:STREAMS]")
    constraints: SearchConstraints | None = None
    speculate: str | None = Field(default=None, pattern=SPECULATE_PATTERN,
                                  description="drafts per round trip for new generations: off, auto or 1-16")

    @model_validator(mode="after")
    def _one_way(self) -> PlanRequest:
        if self.speculate is not None and self.cut is None and not self.search:
            return self  # only the speculation depth changes
        if (self.cut is None) == (not self.search):
            raise ValueError("give either 'cut' (a plan by hand) or 'search': true, not both or neither")
        if (self.bandwidth_bps is None) != (self.rtt_ms is None):
            raise ValueError("give both bandwidth_bps and rtt_ms, or neither")
        return self


async def require_admin(request: Request) -> None:
    """The dependency that guards every admin route: the bearer token, else the dashboard's cookie."""
    await request.app.state.admin_guard.check(request)


def _runtime(request: Request) -> EdgeRuntime:
    return request.app.state.runtime  # type: ignore[no-any-return]


router = APIRouter(prefix="/admin", tags=["admin"])
guarded = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@guarded.get("/plan")
async def get_plan(request: Request) -> dict:
    """The current plan, the link it was chosen for, and every plan change."""
    rt = _runtime(request)
    return {**rt.replanner.snapshot(), "link": rt.link.estimate().__dict__,
            "speculate": rt.orchestrator.speculation,
            "speculation": {**rt.orchestrator.speculation_snapshot(), "totals": rt.metrics.spec_totals()}}


@guarded.post("/plan")
async def set_plan(body: PlanRequest, request: Request) -> dict:
    """Switch to a plan by hand or to a fresh search's choice; running requests finish on their plan."""
    rt = _runtime(request)
    rp = rt.replanner
    n = rt.loaded.layered.num_layers
    if body.speculate is not None:
        rt.orchestrator.set_speculation(body.speculate)
        if body.cut is None and not body.search:
            return {"changed": True, "speculate": rt.orchestrator.speculation}
    if body.cut is not None:
        plan = parse_cut(body.cut, n, codec=body.codec, head=body.head, zstd_level=body.zstd_level).model_copy(
            update={"edge_backend": body.edge_backend, "cloud_backend": body.cloud_backend})
        change = await run_in_threadpool(rp.switch, plan, "admin")
        return {"changed": change is not None, "plan": plan.model_dump(), "describe": plan.describe()}
    link = None
    if body.bandwidth_bps is not None and body.rtt_ms is not None:
        link = Link(bandwidth_bps=body.bandwidth_bps, rtt_ms=body.rtt_ms)
    limits = body.constraints or SearchConstraints()
    constraints = rp.constraints.narrowed(limits.edge_memory_mb, limits.min_edge_layers)
    workload = Workload.parse(body.workload) if body.workload else None
    await run_in_threadpool(rt.plan_inputs)
    result = await run_in_threadpool(rp.search, link, constraints, workload)
    change = await run_in_threadpool(rp.switch, result.best.plan, "admin", link) if body.apply else None
    best = result.best
    return {"changed": change is not None, "plan": best.plan.model_dump(), "describe": best.plan.describe(),
            "estimate": best.estimate.model_dump(), "search_s": result.search_s,
            "baselines": {k: {"describe": v.plan.describe(), "feasible": v.feasible, **v.estimate.model_dump()}
                          for k, v in result.baselines.items()}}


@guarded.get("/profile")
async def get_profile(request: Request) -> dict:
    """Both tiers' profiles (the edge's is measured on first use); the cloud's is null while it is unreachable."""
    rt = _runtime(request)
    edge = await run_in_threadpool(rt.edge_profile)
    inputs = None
    with contextlib.suppress(CloudUnavailableError):  # the edge's profile is still worth showing
        inputs = await run_in_threadpool(rt.plan_inputs)
    return {"edge": edge.model_dump(), "cloud": inputs.cloud.model_dump() if inputs else None}


@guarded.get("/bandwidth")
async def get_bandwidth(request: Request) -> dict:
    """The link estimate now and its history (one point per re-plan check)."""
    rt = _runtime(request)
    return {"estimate": rt.link.estimate().__dict__, "bytes_observed": rt.link.bytes_observed,
            "history": [p.__dict__ for p in rt.replanner.history]}


@guarded.get("/batching")
async def get_batching(request: Request) -> dict:
    """Both tiers' latest batch sizes; the cloud's part (its health) is null while it is unreachable."""
    rt = _runtime(request)
    cloud = None
    if rt.cloud is not None:
        with contextlib.suppress(EdgesplitError):  # down or refusing: the dashboard shows it as unreachable
            cloud = await run_in_threadpool(rt.cloud.health)
    batcher = rt.orchestrator.runners.batcher
    return {"edge": {"batch_size": batcher.last_batch_rows if batcher is not None else 0}, "cloud": cloud}


@guarded.get("/requests")
async def get_requests(request: Request) -> dict:
    """Recent requests (time, endpoint, outcome, latency), for the dashboard's rate and latency charts."""
    return {"now_s": time.time(), "requests": [r.__dict__ for r in _runtime(request).metrics.recent]}


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request) -> HTMLResponse:
    """The operator's page: the plan over the layers, cost bars, link and request history, a repartition form.

    Without credentials it answers 401 with the login form; with wrong ones, 403.
    """
    try:
        await require_admin(request)
    except AuthenticationError:
        return HTMLResponse((_PAGES / "login.html").read_text(), status_code=401,
                            headers=AuthenticationError.headers)
    return HTMLResponse((_PAGES / "dashboard.html").read_text())


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_page() -> HTMLResponse:
    return HTMLResponse((_PAGES / "login.html").read_text())


@router.post("/login", include_in_schema=False, response_model=None)
async def login(request: Request) -> RedirectResponse | HTMLResponse:
    """Check a token posted from the login form; a browser keeps a signed, expiring session value, never the token.

    A wrong token returns to the form with a message (403), after the delay its address has earned.
    """
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0]
    if not token:
        raise UserError("the form needs a token")
    guard: AdminGuard = request.app.state.admin_guard
    try:
        await guard.check(request, token)
    except PermissionDeniedError as exc:
        page = (_PAGES / "login.html").read_text().replace("<!--message-->", f'<p id="message">{exc}</p>')
        return HTMLResponse(page, status_code=403)
    response = RedirectResponse("/admin/dashboard", status_code=303)
    response.set_cookie(COOKIE, guard.cookie(), max_age=int(guard.session_s), httponly=True, samesite="strict",
                        path="/admin", secure=_runtime(request).settings.ssl_certfile is not None)
    return response


@router.post("/logout", include_in_schema=False)
async def logout() -> RedirectResponse:
    """Sign a browser out: its session cookie is dropped, and it is back at the sign-in form."""
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(COOKIE, path="/admin")
    return response

"""Logging both tiers share: a request id on every line, plain or JSON lines, and a quiet access log.

- `RequestIds` (ASGI middleware) gives each HTTP request an id: the caller's `x-request-id` when it is a safe
  token, else a new one; it is answered in the `x-request-id` header and put on every log line written while
  the request runs (`%(request_id)s`), so one grep follows a request, including into the cloud (the edge sends
  it in each session's first frame).
- `configure_logging` sets the root logger up for a tier: `plain` lines or `json` objects (python-json-logger),
  uvicorn's loggers included.
- `QuietAccess` keeps successful polling (`/health`, `/ready`, `/metrics`, the dashboard's `GET /admin/*`) out of
  the access log; errors on those paths are still logged.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from typing import IO, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LogFormat = Literal["plain", "json"]
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # what a session's meta accepts (splitcore.schema.SessionMeta)
QUIET_PATHS = ("/health", "/ready", "/metrics", "/admin/")


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class RequestIds:
    """ASGI middleware: the request id of each HTTP request, in the context while it runs and in its answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if SAFE_ID.match(given) else new_request_id()
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class _WithRequestId(logging.Filter):
    """Puts the current request id (or "-") on every record, for the formats' `%(request_id)s`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class QuietAccess(logging.Filter):
    """Drops uvicorn access lines of successful `GET`s of polled paths (health checks, scrapes, dashboards)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5:
            return True
        _, method, path, _, status = args
        polled = method == "GET" and isinstance(path, str) and path.startswith(QUIET_PATHS)
        return not (polled and isinstance(status, int) and status < 400)


def configure_logging(tier: str, level: str = "info", fmt: LogFormat = "plain", stream: IO[str] | None = None
                      ) -> None:
    """The root logger for one tier's process (to `stream`, default stderr), uvicorn's loggers propagating to it
    (run uvicorn with `log_config=None`)."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(_WithRequestId())
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
                                           rename_fields={"levelname": "level", "name": "logger",
                                                          "asctime": "time"},
                                           static_fields={"tier": tier}))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s {tier} %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QuietAccess) for f in access.filters):
        access.addFilter(QuietAccess())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per decode step would cost more than the step

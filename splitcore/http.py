"""What both services share at the HTTP boundary: the error body and the handlers that map errors to it.

Errors use the OpenAI shape `{"error": {"message", "type", "param", "code"}}` on both tiers, so a
client (or the edge reading the cloud) parses one format.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from splitcore.errors import EdgesplitError
from splitcore.schema import ErrorInfo, ErrorResponse

log = logging.getLogger(__name__)


def error_body(message: str, error_type: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None) -> dict:
    """The OpenAI error object, as JSON."""
    return ErrorResponse(error=ErrorInfo(message=message, type=error_type, param=param, code=code)).model_dump()


def read_error(body: str | bytes) -> tuple[str, str | None] | None:
    """The message and type of an error body (`error_body`, as JSON text); None when `body` is not one."""
    try:
        error = json.loads(body)["error"]
        return str(error["message"]), error.get("type")
    except (ValueError, KeyError, TypeError):  # not our error body
        return None


def answer_to(exc: Exception, where: str = "") -> tuple[int, dict]:
    """The status and error body that answer `exc`, logged as every route logs it, one line with its reason: a
    domain error as itself (info when it is the caller's fault, a warning when it is the server's), anything else
    as a 500 whose trace goes to the log, never out. `where` names what was refused (e.g. "POST /v1/completions")."""
    if isinstance(exc, EdgesplitError):
        status = exc.status_code
        log.log(logging.WARNING if status >= 500 else logging.INFO, "%s%s %s: %s", f"{where} -> " if where else "",
                status, type(exc).__name__, exc)
        return status, error_body(str(exc), exc.error_type, getattr(exc, "param", None), status)
    log.error("%s%s 500: unhandled error", f"{where} -> " if where else "", type(exc).__name__, exc_info=exc)
    return 500, error_body(f"internal error ({type(exc).__name__}); see the server log", "server_error", code=500)


def _where(request: Request) -> str:
    return f"{request.method} {request.url.path}"


def error_response(status: int, message: str, error_type: str = "invalid_request_error", param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, error_type, param, status), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return (f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")), param


def install_error_handlers(app: FastAPI, log_bodies: bool = False) -> None:
    """Map domain errors, validation errors and HTTP errors to the error body; never leak a traceback. Each
    refusal logs one line with its reason (`answer_to`); `log_bodies` adds an invalid request's body (debug)."""

    @app.exception_handler(EdgesplitError)
    async def _domain(request: Request, exc: EdgesplitError) -> JSONResponse:
        status, body = answer_to(exc, _where(request))
        return JSONResponse(body, status_code=status, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        log.info("%s -> 400 invalid request: %s%s", _where(request), message,
                 f"; body: {str(exc.body)[:2000]}" if log_bodies else "")
        return error_response(400, message, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        log.info("%s -> %d: %s", _where(request), exc.status_code, exc.detail)
        return error_response(exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        status, body = answer_to(exc, _where(request))  # the trace goes to the log, never to the client
        return JSONResponse(body, status_code=status)


class AnswerHeaders:
    """ASGI middleware: the headers in `headers` on every HTTP answer (e.g. which replica answered); the dict is
    read per answer, so its owner may add to it later."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                ours = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
                message = {**message, "headers": [*message.get("headers", []), *ours]}
            await send(message)

        await self.app(scope, receive, send_with_header)


class BodyLimit:
    """ASGI middleware: refuse a request body over `max_bytes` with 413 before it is all in memory, and one that
    arrives too slowly with 408.

    Checks the declared length first, then reads the body (a chunked one declares none) up to the limit and
    hands it on whole, as the handlers would read it anyway: the edge's JSON bodies and the cloud's frames. Each
    piece must come within `idle_s` and the whole within `total_s`, so a slow client cannot hold a worker.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, idle_s: float = 10.0, total_s: float = 120.0) -> None:
        self.app, self.max_bytes, self.idle_s, self.total_s = app, max_bytes, idle_s, total_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        deadline = time.monotonic() + self.total_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), min(self.idle_s, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                log.info("closed a request whose body came too slowly (%s %s)", scope["method"], scope["path"])
                await error_response(408, "the request body arrived too slowly")(scope, receive, send)
                return
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        log.info("%s %s -> 413: the body is over the %d-byte limit", scope["method"], scope["path"], self.max_bytes)
        response = error_response(413, f"request body is over the {self.max_bytes}-byte limit")
        await response(scope, receive, send)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on how long a request's headers may take to arrive.

    uvicorn bounds an idle kept-alive connection but not a request whose headers trickle in (a slowloris holds
    the connection for as long as it likes). Here every request's headers, on a new connection or after the
    previous response, must be complete within `header_timeout_s`, or the connection is closed. Pass a subclass
    from `header_timeout_protocol` as uvicorn's `http=`.
    """

    header_timeout_s = 10.0
    _headers_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_headers_timer()

    def on_headers_complete(self) -> None:
        self._disarm_headers_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_headers_timer()  # the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_headers_timer()
        super().connection_lost(exc)

    def _arm_headers_timer(self) -> None:
        self._disarm_headers_timer()
        self._headers_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_headers_timer(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_too_slow(self) -> None:
        self._headers_timer = None
        if not self.transport.is_closing():
            log.info("closed a connection whose request headers did not arrive within %.0f s", self.header_timeout_s)
            self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """uvicorn's `http=` protocol class with this header timeout."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": timeout_s})

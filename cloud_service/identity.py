"""Who is calling the cloud: a bearer token per edge (or the one shared token), checked on the request's headers
before any of its body is read.

`CLOUD_EDGE_TOKENS="phone-a=<token>,gateway-b=<token>"` gives each edge its own credential and name; a session
belongs to the edge that opened it (another edge gets 404 for it, as for an unknown one) and the per-edge session
cap counts per name. `CLOUD_AUTH_TOKEN`, the token every edge shares, is the edge named "edge". With neither set,
the cloud is open and an edge is known by its address.
"""

from __future__ import annotations

import secrets

from pydantic import SecretStr
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from splitcore.auth import bearer
from splitcore.errors import AuthenticationError, EdgesplitError, PermissionDeniedError, UserError
from splitcore.http import answer_to

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})  # for load balancers and Prometheus: no secrets there
SHARED_NAME = "edge"  # the identity of the shared CLOUD_AUTH_TOKEN


class EdgeTokens:
    """The configured tokens by edge name; `identify` finds whose a presented token is, in constant time."""

    def __init__(self, tokens: dict[str, SecretStr]) -> None:
        assert tokens, "no tokens: the cloud is open"
        self._tokens = [(name, token.get_secret_value().encode()) for name, token in tokens.items()]

    @classmethod
    def parse(cls, edge_tokens: SecretStr | None, shared: SecretStr | None) -> EdgeTokens | None:
        """From `CLOUD_EDGE_TOKENS` ('name=token,...') and `CLOUD_AUTH_TOKEN`; None when neither is set.

        Raises:
            UserError: a malformed pair, an empty name or token, a name or token given twice.
        """
        tokens: dict[str, SecretStr] = {SHARED_NAME: shared} if shared is not None else {}
        for pair in (edge_tokens.get_secret_value().split(",") if edge_tokens else []):
            name, sep, token = pair.strip().partition("=")
            if not sep or not name.strip() or not token.strip():
                raise UserError("CLOUD_EDGE_TOKENS: give name=token pairs separated by commas")
            if name.strip() in tokens:
                raise UserError(f"CLOUD_EDGE_TOKENS: edge {name.strip()!r} is named twice")
            tokens[name.strip()] = SecretStr(token.strip())
        values = [t.get_secret_value() for t in tokens.values()]
        if len(set(values)) != len(values):
            raise UserError("CLOUD_EDGE_TOKENS: two edges share a token; give each its own")
        return cls(tokens) if tokens else None

    def identify(self, given: str) -> str:
        """The name of the edge whose token `given` is.

        Raises:
            AuthenticationError: no token (401).
            PermissionDeniedError: a token no edge has (403).
        """
        if not given:
            raise AuthenticationError("edge credentials required: send 'Authorization: Bearer <token>'")
        found = ""
        for name, token in self._tokens:  # every comparison runs, so the time says nothing of which matched
            if secrets.compare_digest(given.encode(), token):
                found = name
        if not found:
            raise PermissionDeniedError("wrong edge token")
        return found


class EdgeAuth:
    """ASGI middleware: authenticate every guarded request on its headers (the body is not read for a refused
    one) and put the caller's identity in `request.state.edge`. A WebSocket (the frame channel) is checked on its
    handshake, and a refused one gets the same status and error body (the ASGI WebSocket denial response)."""

    def __init__(self, app: ASGIApp, tokens: EdgeTokens | None) -> None:
        self.app, self.tokens = app, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.tokens is None:
            client = scope.get("client")
            identity = client[0] if client else ""
        else:
            try:
                identity = self.tokens.identify(bearer(HTTPConnection(scope)))  # the headers only: nothing is received
            except EdgesplitError as exc:
                status, body = answer_to(exc, f"{scope.get('method', 'WEBSOCKET')} {scope['path']}")  # logs why
                response = JSONResponse(body, status_code=status, headers=getattr(exc, "headers", None))
                await response(scope, receive, send)
                return
        scope.setdefault("state", {})["edge"] = identity
        await self.app(scope, receive, send)

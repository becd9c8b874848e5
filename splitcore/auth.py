"""Bearer-token checks shared by both tiers: the cloud's shard API and the edge's admin API.

Tokens come from settings as `SecretStr` (never printed), and are compared in constant time.
"""

from __future__ import annotations

import secrets

from pydantic import SecretStr
from starlette.requests import HTTPConnection

from splitcore.errors import AuthenticationError, PermissionDeniedError


def bearer(request: HTTPConnection) -> str:
    """The token of an `Authorization: Bearer ...` header, or ''."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def check_token(given: str, expected: SecretStr, what: str) -> None:
    """Raise unless `given` is `expected`.

    Raises:
        AuthenticationError: no token given (401).
        PermissionDeniedError: the wrong token (403).
    """
    if not given:
        raise AuthenticationError(f"{what} credentials required: send 'Authorization: Bearer <token>'")
    if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise PermissionDeniedError(f"wrong {what} token")


def empty_is_none(value: object) -> object:
    """Settings validator: an empty token variable (as docker-compose passes when unset) means no token."""
    return None if value == "" else value

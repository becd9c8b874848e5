"""Who may use the edge's admin surface: the admin token as a bearer header, or the signed, expiring cookie that
`/admin/login` gives a browser.

The cookie never holds the token: it holds an expiry and an HMAC of it under a key derived from the token (so
changing `EDGE_ADMIN_TOKEN` signs every browser out). Wrong tokens are answered after a delay that doubles with
each failure from the same address (capped), so guessing is slow; the right one resets it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable

from fastapi import Request
from pydantic import SecretStr

from splitcore.auth import bearer, check_token
from splitcore.errors import PermissionDeniedError

COOKIE = "edgesplit_admin"
FIRST_DELAY_S, MAX_DELAY_S = 0.05, 2.0  # the answer to a wrong token waits this long, doubling per failure
FAILURES_KEPT = 1024  # addresses whose failures are remembered
FAILURES_FORGOTTEN_S = 300.0  # an address that has not failed for this long starts again from the first delay


class AdminGuard:
    """Checks admin credentials for `/admin/*`; `clock` is injectable for tests."""

    def __init__(self, token: SecretStr | None, session_s: float, clock: Callable[[], float] = time.time) -> None:
        self.token, self.session_s, self._clock = token, session_s, clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (count, last failure)

    def cookie(self) -> str:
        """A fresh signed session value: `expiry.signature`."""
        expiry = str(int(self._clock() + self.session_s))
        return f"{expiry}.{self._sign(expiry)}"

    def cookie_valid(self, value: str) -> bool:
        expiry, _, signature = value.partition(".")
        if not expiry.isdigit() or self.token is None:
            return False
        return hmac.compare_digest(signature, self._sign(expiry)) and int(expiry) > self._clock()

    async def check(self, request: Request, token: str | None = None) -> None:
        """Let the request through, or raise after the delay its address has earned.

        `token` is one posted from the login form; otherwise the bearer header, else the cookie, is checked.

        Raises:
            PermissionDeniedError: no admin token is configured, or a wrong one was given (403).
            AuthenticationError: no credentials, or an expired cookie (401).
        """
        if self.token is None:
            raise PermissionDeniedError("the admin API is off: start the edge with EDGE_ADMIN_TOKEN set")
        given = token if token is not None else bearer(request)
        if not given and self.cookie_valid(request.cookies.get(COOKIE, "")):
            return
        address = request.client.host if request.client else ""
        try:  # nothing given (or an expired cookie) is a 401 without penalty; a wrong token waits first
            check_token(given, self.token, "admin")
        except PermissionDeniedError:
            await asyncio.sleep(self._failed(address))
            raise
        self._failures.pop(address, None)

    def _failed(self, address: str) -> float:
        now = self._clock()
        count, last = self._failures.pop(address, (0, now))
        count = 1 if now - last > FAILURES_FORGOTTEN_S else count + 1
        self._failures[address] = (count, now)
        while len(self._failures) > FAILURES_KEPT:
            self._failures.popitem(last=False)
        return min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (count - 1))

    def _sign(self, expiry: str) -> str:
        assert self.token is not None
        key = hmac.new(self.token.get_secret_value().encode(), b"edgesplit admin cookie", hashlib.sha256).digest()
        return hmac.new(key, expiry.encode(), hashlib.sha256).hexdigest()

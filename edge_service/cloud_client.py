"""The one place that speaks to the cloud tier; transport errors are translated here, once.

A sync `httpx.Client` (thread-safe, pooled keep-alive connections): a
generation runs in a worker thread and makes one POST per step over a
connection that stays open, with a binary body each way.
"""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from pathlib import Path

import httpx

from splitcore.errors import (
    CapacityError,
    CloudModelMismatchError,
    CloudRefusedError,
    CloudSessionLostError,
    CloudUnavailableError,
)
from splitcore.wire import MEDIA_TYPE, short_id

log = logging.getLogger(__name__)


class CloudClient:
    """HTTP client of the cloud's shard API."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, connect_timeout_s: float = 3.0,
                 max_connections: int = 64, token: str | None = None, ca_file: Path | None = None,
                 client_cert: tuple[Path, Path] | None = None) -> None:
        """`token` goes in each request's Authorization header; `ca_file` verifies an https cloud; `client_cert`
        (certificate, key) answers a cloud that asks for mutual TLS."""
        self.base_url = base_url.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        headers = {"content-type": MEDIA_TYPE}
        if token:
            headers["authorization"] = f"Bearer {token}"
        verify: ssl.SSLContext | bool = True
        if ca_file is not None or client_cert is not None:
            verify = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if client_cert is not None:
                verify.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers=headers, verify=verify,
        )

    def forward(self, frame: bytes, *, timeout_s: float | None = None) -> bytes:
        """Send one frame, return the answer frame; `timeout_s` bounds this step (default: the client's).

        Raises:
            CloudUnavailableError: the cloud could not be reached, timed out or failed.
            CloudSessionLostError: the cloud no longer holds the frame's session.
            CloudRefusedError: the cloud refused the frame (its status is kept).
            CapacityError: the cloud is at capacity; try again later.
        """
        kwargs: dict = {}
        if timeout_s is not None:
            kwargs["timeout"] = httpx.Timeout(timeout_s, connect=min(timeout_s, self.connect_timeout_s))
        try:
            response = self._request("POST", "/v1/shard/forward", content=frame, **kwargs)
        except CloudRefusedError as exc:
            if exc.cloud_status == 404:
                raise CloudSessionLostError(str(exc), 404) from exc
            raise
        return response.content

    def end_session(self, session: uuid.UUID) -> None:
        """Free the session's cloud cache; a session the cloud no longer holds is fine."""
        try:
            self._request("DELETE", f"/v1/sessions/{session}")
        except CloudRefusedError as exc:
            if exc.cloud_status != 404:  # 404: already expired or evicted, nothing left to free
                log.warning("could not end cloud session %s: %s", short_id(session), exc)
        except CloudUnavailableError as exc:  # the cloud's TTL frees it later
            log.warning("could not end cloud session %s: %s", short_id(session), exc)

    def probe(self, nbytes: int) -> float:
        """Send `nbytes` to the cloud's probe endpoint; return the round trip in milliseconds."""
        started = time.perf_counter()
        self._request("POST", "/v1/probe", content=b"\0" * nbytes)
        return (time.perf_counter() - started) * 1000

    def profile(self) -> dict:
        """The cloud's measured profile (JSON)."""
        return self._request("GET", "/profile").json()

    def health(self) -> dict:
        """The cloud's health: live sessions, cache memory, the size of its latest batch."""
        return self._request("GET", "/health").json()

    def info(self) -> dict:
        """The cloud's model identity and held blocks."""
        return self._request("GET", "/v1/info").json()

    def hold(self, start: int, end: int) -> tuple[int, int]:
        """Ask the cloud to load blocks [start, end); return the blocks it holds now."""
        held = self._request("POST", "/v1/layers", json={"start": start, "end": end},
                             headers={"content-type": "application/json"}).json()["held_layers"]
        return int(held[0]), int(held[1])

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.TimeoutException as exc:
            raise CloudUnavailableError(f"cloud at {self.base_url} timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise CloudUnavailableError(f"cloud at {self.base_url} is unreachable: {exc}") from exc
        if response.status_code < 400:
            return response
        message, kind = _error_of(response)
        if response.status_code == 429:
            raise CapacityError(f"the cloud is at capacity: {message}")
        if response.status_code < 500:
            refused = CloudModelMismatchError if kind == "model_mismatch" else CloudRefusedError
            raise refused(f"cloud refused the request ({response.status_code}): {message}", response.status_code)
        raise CloudUnavailableError(f"cloud failed ({response.status_code}): {message}")


def _error_of(response: httpx.Response) -> tuple[str, str | None]:
    """The message and type of the cloud's error body; the status's text when it is not one of ours."""
    try:
        error = response.json()["error"]
        return str(error["message"]), str(error["type"])
    except (ValueError, KeyError, TypeError):  # not our error body: keep the text
        return response.text[:200], None

"""The one place that speaks to the cloud tier; transport errors are translated here, once.

Frames go over the cloud's frame channel (`edge_service.channel_client`: one WebSocket per edge, every
generation's frames multiplexed on it) or, with `transport="http"`, as one POST per step on a sync
`httpx.Client` (thread-safe, pooled keep-alive connections). Where the channel's handshake is refused (an older
cloud, a proxy that cannot pass WebSockets), frames go over HTTP and the channel is tried again later. Both
raise the same errors for the same answers. Everything but frames (sessions' ends, probes, profile, health)
is HTTP.
"""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NoReturn

import httpx

from edge_service.channel_client import ChannelRefusedError, FrameChannel
from edge_service.replicas import ReplicaSessions, Route
from splitcore.errors import (
    CapacityError,
    CloudModelMismatchError,
    CloudRefusedError,
    CloudSessionLostError,
    CloudUnavailableError,
)
from splitcore.http import read_error
from splitcore.replicas import SESSION_HEADER
from splitcore.wire import MEDIA_TYPE, short_id

log = logging.getLogger(__name__)

Transport = Literal["websocket", "http"]
FIRST_FRAME_RETRIES_S = (0.2, 1.0)  # a replicated cloud's failed first frame is tried again after these waits
CHANNEL_RETRY_S = 300.0  # after a refused channel handshake, frames go over HTTP this long before a new try


class CloudClient:
    """Client of the cloud's shard API: frames over the channel or HTTP, everything else over HTTP."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, connect_timeout_s: float = 3.0,
                 max_connections: int = 64, token: str | None = None, ca_file: Path | None = None,
                 client_cert: tuple[Path, Path] | None = None, transport: Transport = "websocket") -> None:
        """`token` goes in each request's Authorization header; `ca_file` verifies an https cloud; `client_cert`
        (certificate, key) answers a cloud that asks for mutual TLS; `transport` carries the frames."""
        self.base_url = base_url.rstrip("/")
        self.on_probe: Callable[[int], None] | None = None  # told the body size of each probe sent (metrics)
        self.timeout_s = timeout_s
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
        self._channel_headers = {k: v for k, v in headers.items() if k == "authorization"}
        self._ssl = verify if isinstance(verify, ssl.SSLContext) else None
        self._channel = FrameChannel(self.base_url, self._channel_headers, self._ssl,
                                     connect_timeout_s) if transport == "websocket" else None
        self._transport = transport
        self._replica_channels: dict[str, FrameChannel] = {}  # a replicated cloud's replicas' own listeners
        self._no_replica_channel: set[str] = set()  # replicas' addresses that refused a channel: HTTP there
        self._channel_retry_at = 0.0  # monotonic time before which frames go over HTTP (a refused handshake)
        self.replicas = ReplicaSessions()  # which replica of a replicated cloud holds each session

    def forward(self, frame: bytes, *, timeout_s: float | None = None, session: uuid.UUID | None = None) -> bytes:
        """Send one frame, return the answer frame; `timeout_s` bounds this step (default: the client's).

        `session` (the frame's) goes in Ray Serve's session header, so a replicated cloud routes the frame to the
        replica that holds the session's cache (`cloud_service.ray_router`). Where a replica answered the
        session before and the cloud now fails it, the session is lost with that replica, not the whole cloud:
        `CloudSessionLostError`, so the caller replays it (to another replica) before giving up on the cloud.

        Raises:
            CloudUnavailableError: the cloud could not be reached, timed out or failed.
            CloudSessionLostError: the cloud no longer holds the frame's session.
            CloudRefusedError: the cloud refused the frame (its status is kept).
            CapacityError: the cloud is at capacity; try again later.
        """
        route = self.replicas.route(session)
        if route is not None and route.url is not None and self._transport == "websocket":
            answer = self._to_replica(route.replica, route.url, frame, timeout_s or self.timeout_s, session)
            if answer is not None:
                return answer
        if self._channel is not None and time.monotonic() >= self._channel_retry_at:
            try:
                return self._over_channel(self._channel, frame, timeout_s or self.timeout_s)
            except ChannelRefusedError as exc:
                if exc.error is not None:  # the cloud's own refusal (a wrong token, capacity): HTTP would meet it too
                    self._raise_for(exc.status, *exc.error)
                self._channel_retry_at = time.monotonic() + CHANNEL_RETRY_S
                log.warning("%s; frames go over HTTP for the next %.0f s", exc, CHANNEL_RETRY_S)
        return self._forward_http(frame, timeout_s, session, route)

    def _to_replica(self, replica: str, url: str, frame: bytes, timeout_s: float, session: uuid.UUID | None
                    ) -> bytes | None:
        """`frame` over a channel to the replica's own listener (one per replica, opened on first use); None if
        that replica offers none (the frame then goes over HTTP)."""
        if url in self._no_replica_channel:
            return None
        channel = self._replica_channels.get(url)
        if channel is None:
            channel = self._replica_channels[url] = FrameChannel(url, self._channel_headers, self._ssl,
                                                                 self.connect_timeout_s)
        try:
            answer = self._over_channel(channel, frame, timeout_s)
        except ChannelRefusedError as exc:
            if exc.error is not None:  # the replica's own refusal (a wrong token, capacity)
                self._raise_for(exc.status, *exc.error)
            self._no_replica_channel.add(url)
            self._replica_channels.pop(url, None)
            log.info("replica %s offers no frame channel (%s): its frames go over HTTP", replica, exc)
            return None
        except CloudUnavailableError as exc:  # the replica failed (or stalled), and the session with it
            # The channel stays: it reconnects on its next use (a dead replica's refuses, and its sessions are
            # replayed elsewhere); closing it would fail every other session's step waiting on it.
            self.replicas.direct_failed(url)
            raise CloudSessionLostError(f"replica {replica} holding session {short_id(session) if session else '-'} "
                                        f"failed: {exc}", 503) from exc
        self.replicas.reached(url)
        return answer

    def _forward_http(self, frame: bytes, timeout_s: float | None, session: uuid.UUID | None,
                      route: Route | None) -> bytes:
        """One POST: to `route`, the replica holding `session` (its own address when it gave one), or through the
        cloud's front door. A first frame to a replicated cloud is retried: its proxy may still route to a replica that
        has just died."""
        kwargs: dict = {}
        if timeout_s is not None:
            kwargs["timeout"] = httpx.Timeout(timeout_s, connect=min(timeout_s, self.connect_timeout_s))
        if session is not None:
            kwargs["headers"] = {SESSION_HEADER: str(session)}
        path = f"{route.url}/v1/shard/forward" if route is not None and route.url else "/v1/shard/forward"
        waits = FIRST_FRAME_RETRIES_S if route is None and self.replicas.replicated else ()
        for wait in (*waits, None):
            try:
                response = self._request("POST", path, content=frame, **kwargs)
                break
            except CloudRefusedError as exc:
                if exc.cloud_status == 404:
                    raise CloudSessionLostError(str(exc), 404) from exc
                raise
            except CloudUnavailableError as exc:
                if route is not None and session is not None:  # the replica holding it failed, not the cloud
                    if route.url is not None and path.startswith(route.url):
                        self.replicas.direct_failed(route.url)
                    raise CloudSessionLostError(f"replica {route.replica} holding session {short_id(session)} "
                                                f"failed: {exc}", 503) from exc
                if wait is None:
                    raise
                log.warning("%s; trying again in %.1f s", exc, wait)
                time.sleep(wait)
        self.replicas.answered(session, response.headers, direct=path != "/v1/shard/forward")
        return response.content

    @property
    def connected_at(self) -> float:
        """`time.perf_counter()` when a frame channel (the cloud's, or a replica's) last opened (0 without one): an
        exchange that began before it may have paid for the handshake too."""
        channels = [*([self._channel] if self._channel is not None else []), *self._replica_channels.values()]
        return max((c.connected_at for c in channels), default=0.0)

    def _over_channel(self, channel: FrameChannel, frame: bytes, timeout_s: float) -> bytes:
        answer, refusal = channel.exchange(frame, timeout_s)
        if refusal is not None:
            status, message, kind = refusal
            if status == 404:
                raise CloudSessionLostError(f"cloud refused the request (404): {message}", 404)
            self._raise_for(status, message, kind)
        assert answer is not None
        return answer

    def end_session(self, session: uuid.UUID) -> None:
        """Free the session's cloud cache; a session the cloud no longer holds is fine."""
        route = self.replicas.route(session)
        self.replicas.ended(session)
        base = route.url if route is not None and route.url else ""
        try:
            self._request("DELETE", f"{base}/v1/sessions/{session}", headers={SESSION_HEADER: str(session)})
        except CloudRefusedError as exc:
            if exc.cloud_status != 404:  # 404: already expired or evicted, nothing left to free
                log.warning("could not end cloud session %s: %s", short_id(session), exc)
        except CloudUnavailableError as exc:  # the cloud's TTL frees it later
            log.warning("could not end cloud session %s: %s", short_id(session), exc)

    def probe(self, nbytes: int) -> float:
        """Send `nbytes` to the cloud's probe endpoint; return the round trip in milliseconds."""
        started = time.perf_counter()
        self._request("POST", "/v1/probe", content=b"\0" * nbytes)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if self.on_probe is not None:
            self.on_probe(nbytes)
        return elapsed_ms

    def profile(self) -> dict:
        """The cloud's measured profile (JSON)."""
        return self._request("GET", "/profile").json()

    def health(self) -> dict:
        """The cloud's health: live sessions, cache memory, the size of its latest batch."""
        return self._request("GET", "/health").json()

    def info(self) -> dict:
        """The cloud's model identity and held blocks; a cloud that offers no frame channel (replicas, each
        frame routed by its session) gets frames over HTTP from then on."""
        info = self._request("GET", "/v1/info").json()
        if info.get("frame_channel") is False and self._channel is not None:
            log.info("the cloud at %s routes each frame to its session's replica: frames go over HTTP", self.base_url)
            self._channel.close()
            self._channel = None
        return info

    def hold(self, start: int, end: int) -> tuple[int, int]:
        """Ask the cloud to load blocks [start, end); return the blocks it holds now."""
        held = self._request("POST", "/v1/layers", json={"start": start, "end": end},
                             headers={"content-type": "application/json"}).json()["held_layers"]
        return int(held[0]), int(held[1])

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        for channel in list(self._replica_channels.values()):
            channel.close()
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
        self._raise_for(response.status_code, *_error_of(response))

    @staticmethod
    def _raise_for(status: int, message: str, kind: str | None) -> NoReturn:
        """The error of a refused or failed request, whichever transport carried it."""
        if status == 429:
            raise CapacityError(f"the cloud is at capacity: {message}")
        if status < 500:
            refused = CloudModelMismatchError if kind == "model_mismatch" else CloudRefusedError
            raise refused(f"cloud refused the request ({status}): {message}", status)
        raise CloudUnavailableError(f"cloud failed ({status}): {message}")


def _error_of(response: httpx.Response) -> tuple[str, str | None]:
    """The message and type of the cloud's error body; the status's text when it is not one of ours."""
    return read_error(response.content) or (response.text[:200], None)

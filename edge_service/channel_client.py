"""The edge's end of the frame channel (`splitcore.channel`): one WebSocket to the cloud, shared by every
generation of this edge, each frame tagged and its answer matched by tag.

No reader thread: a generation waiting for its answer reads the socket itself while no other one does (the
leader), hands every answer it reads to its owner, and passes the reading on when its own has come. A lone
generation thus reads its own answers with no thread hop of ours (websockets' sync client has one of its own).

Errors are those of `CloudClient`'s HTTP path: a refused frame raises what its status means there; a connection
that closes or cannot be opened fails every waiting step with `CloudUnavailableError`, and the next step opens a
new one (sessions live in the cloud's engine, not in the connection). A cloud or proxy that refuses the upgrade
itself (no channel route, a proxy that cannot pass WebSockets) raises `ChannelRefusedError`, so the caller can
go on over HTTP.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import ssl
import threading
import time

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from splitcore.channel import CHANNEL_PATH, MAX_TAG, pack, parse_error, unpack
from splitcore.errors import CloudUnavailableError, EdgesplitError
from splitcore.http import read_error

log = logging.getLogger(__name__)



class ChannelRefusedError(EdgesplitError):
    """The cloud, or a proxy on the way, refused to open the channel; `status` is the handshake's answer and
    `error` the cloud's own error (message, type) when the body is one (e.g. a wrong token), else None (no
    channel route there, a proxy's page)."""

    status_code = 502

    def __init__(self, message: str, status: int, error: tuple[str, str | None] | None = None) -> None:
        super().__init__(message)
        self.status, self.error = status, error


class _Slot:
    """One frame's wait: its answer, or the error that ends it."""

    __slots__ = ("answer", "error")

    def __init__(self) -> None:
        self.answer: bytes | None = None
        self.error: tuple[int, str, str | None] | Exception | None = None  # (status, message, type) or an exception

    @property
    def done(self) -> bool:
        return self.answer is not None or self.error is not None


class FrameChannel:
    """A WebSocket to the cloud's frame channel, opened on first use and again after it is lost; thread-safe."""

    def __init__(self, base_url: str, headers: dict[str, str], ssl_context: ssl.SSLContext | None,
                 connect_timeout_s: float, max_message_bytes: int = 1 << 30) -> None:
        scheme, _, rest = base_url.partition("://")
        self.url = ("wss" if scheme == "https" else "ws") + "://" + rest + CHANNEL_PATH
        self.headers = headers
        self.ssl_context = ssl_context if scheme == "https" else None
        if scheme == "https" and self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()  # the system's CAs, as httpx's default
        self.connect_timeout_s = connect_timeout_s
        self.connected_at = 0.0  # perf_counter when the latest connection opened: exchanges begun before it
        # paid for the handshake, so their time says nothing of the link (`Orchestrator._cross`)
        self.max_message_bytes = max_message_bytes
        self._cv = threading.Condition()  # guards everything below
        self._conn: ClientConnection | None = None
        self._opening = threading.Lock()  # one handshake at a time
        self._pending: dict[int, _Slot] = {}
        self._reading = False  # a waiting thread is reading the socket for everyone
        self._tags = itertools.count()

    def exchange(self, frame: bytes, timeout_s: float) -> tuple[bytes | None, tuple[int, str, str | None] | None]:
        """Send `frame`; return its answer frame, or the cloud's refusal (status, message, error type).

        Raises:
            CloudUnavailableError: the channel could not be opened, was lost, or the answer took over `timeout_s`.
            ChannelRefusedError: the handshake was refused with a status other than 401, 403 and 429.
        """
        conn = self._connection()
        deadline = time.monotonic() + timeout_s
        slot, tag = _Slot(), next(self._tags) % (MAX_TAG + 1)
        with self._cv:
            self._pending[tag] = slot
        try:
            try:
                conn.send(pack(tag, frame))
            except ConnectionClosed as exc:
                self._lost(conn, exc)
            self._wait(conn, slot, deadline, timeout_s)
        finally:
            with self._cv:
                self._pending.pop(tag, None)  # a late answer to a step given up on is dropped
        if isinstance(slot.error, Exception):
            raise slot.error
        return slot.answer, slot.error

    def close(self) -> None:
        with self._cv:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _wait(self, conn: ClientConnection, slot: _Slot, deadline: float, timeout_s: float) -> None:
        with self._cv:
            while not slot.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CloudUnavailableError(f"cloud at {self.url} timed out (no answer on the channel within "
                                                f"{timeout_s:.1f} s)")
                if self._reading:
                    self._cv.wait(left)
                    continue
                self._reading = True
                self._cv.release()
                try:
                    self._read(conn, slot, deadline)
                finally:
                    self._cv.acquire()
                    self._reading = False
                    self._cv.notify_all()  # someone else may lead now

    def _read(self, conn: ClientConnection, slot: _Slot, deadline: float) -> None:
        """Read answers for everyone until `slot`'s has come or the deadline passes."""
        while not slot.done:
            try:
                message = conn.recv(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return
            except ConnectionClosed as exc:
                self._lost(conn, exc)
                return
            if isinstance(message, bytes):
                tag, answer = unpack(message)
                with self._cv:
                    if (owner := self._pending.get(tag)) is not None:
                        owner.answer = answer
                        self._cv.notify_all()
            else:
                of, status, text, kind = parse_error(message)
                with self._cv:
                    owner = self._pending.get(of) if of is not None else None
                    if owner is not None:
                        owner.error = (status, text, kind)
                        self._cv.notify_all()
                    else:  # a message of no known step (the cloud could not read a tag): it concerns no waiter
                        log.warning("cloud channel: %s (%d)", text, status)

    def _lost(self, conn: ClientConnection, exc: ConnectionClosed) -> None:
        """The connection closed: every step waiting on it fails, and the next one opens a new connection."""
        reason = f"{exc.rcvd.code} {exc.rcvd.reason}".strip() if exc.rcvd else "no close frame"
        error = CloudUnavailableError(f"cloud at {self.url} closed the channel ({reason})")
        with self._cv:
            if self._conn is conn:
                self._conn = None
            for s in self._pending.values():
                if not s.done:
                    s.error = error
            self._cv.notify_all()
        log.warning("cloud channel lost (%s); the next step reconnects", reason)

    def _connection(self) -> ClientConnection:
        with self._cv:
            if self._conn is not None:
                return self._conn
        with self._opening:
            with self._cv:
                if self._conn is not None:  # opened by another thread meanwhile
                    return self._conn
            conn = self._open()
            with self._cv:
                self._conn = conn
            return conn

    def _open(self) -> ClientConnection:
        stack = contextlib.ExitStack()  # the connection is closed by `close` or when lost, not by this stack
        try:
            conn = stack.enter_context(connect(
                self.url, ssl=self.ssl_context, additional_headers=self.headers, compression=None,
                open_timeout=self.connect_timeout_s, max_size=self.max_message_bytes, user_agent_header=None))
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode(errors="replace") if exc.response.body else ""
            raise ChannelRefusedError(f"the cloud refused the channel ({status}): {body[:200]}", status,
                                      read_error(body)) from exc
        except InvalidHandshake as exc:  # not a WebSocket server at all (e.g. a proxy that answers otherwise)
            raise ChannelRefusedError(f"the cloud's answer to the channel handshake was not one: {exc}", 502) from exc
        except (OSError, TimeoutError) as exc:
            raise CloudUnavailableError(f"cloud at {self.url} is unreachable: {exc}") from exc
        stack.pop_all()
        self.connected_at = time.perf_counter()
        log.info("opened the frame channel to %s", self.url)
        return conn


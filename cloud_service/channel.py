"""How the cloud answers frames: one path for `POST /v1/shard/forward` and for the per-edge frame channel.

The channel (`splitcore.channel`) is a WebSocket an edge opens once: each binary message is a tagged frame, run
as a task of its own so that the frames of an edge's concurrent sessions join one batch, and answered with the
same tag. Errors are the HTTP route's, as tagged text messages. The connection is authenticated once, by
`EdgeAuth` on its handshake; every frame is then checked by the engine exactly as a POSTed one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from cloud_service.engine import ShardEngine
from cloud_service.metrics import CloudMetrics
from splitcore.channel import error_message, pack, unpack
from splitcore.errors import EdgesplitError, FrameTooLargeError
from splitcore.http import answer_to, error_body

log = logging.getLogger(__name__)


class FrameService:
    """Runs one frame for a caller and counts it in the cloud's metrics, whichever transport brought it."""

    def __init__(self, metrics: CloudMetrics, max_frame_bytes: int) -> None:
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes

    async def answer(self, engine: ShardEngine, data: bytes, caller: str) -> bytes:
        """The answer frame to request frame `data` from edge `caller`.

        Raises:
            EdgesplitError: the frame was refused or failed (counted by type).
        """
        metrics = self.metrics
        metrics.in_flight.inc()
        metrics.link_bytes.labels("received").inc(len(data))
        try:
            with metrics.step_latency.time():
                if len(data) > self.max_frame_bytes:
                    raise FrameTooLargeError(f"frame is over the {self.max_frame_bytes}-byte limit")
                answer = await engine.forward_async(data, caller)
        except EdgesplitError as exc:
            metrics.errors.labels(type(exc).__name__).inc()
            raise
        finally:
            metrics.in_flight.dec()
        metrics.link_bytes.labels("sent").inc(len(answer))
        return answer


async def serve_channel(ws: WebSocket, engine: Callable[[], ShardEngine], frames: FrameService) -> None:
    """Serve one edge's channel until it closes; steps still running then finish, their answers dropped.

    `engine` gives the engine each frame runs on, read per frame as the HTTP route reads it per request.
    """
    caller: str = ws.scope.get("state", {}).get("edge", "")
    await ws.accept()
    sending = asyncio.Lock()  # one message at a time on the socket
    running: set[asyncio.Task[None]] = set()  # referenced until done, or the loop may collect them mid-step
    frames.metrics.channels.inc()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:
                await _send(ws, sending, error_message(None, 400, error_body("send frames as binary messages")))
                continue
            task = asyncio.create_task(_one(ws, sending, engine(), frames, data, caller))
            running.add(task)
            task.add_done_callback(running.discard)
    except WebSocketDisconnect:  # the edge went away mid-receive: same as a close
        pass
    finally:
        frames.metrics.channels.dec()
    if running:
        log.info("edge %r closed its channel with %d steps running; they finish unanswered", caller, len(running))


async def _one(ws: WebSocket, sending: asyncio.Lock, engine: ShardEngine, frames: FrameService, data: bytes,
               caller: str) -> None:
    tag = None  # until the message's tag is read: an answer to no known step
    try:
        tag, frame = unpack(data)
        reply: bytes | str = pack(tag, await frames.answer(engine, frame, caller))
    except Exception as exc:  # noqa: BLE001 (answered as the HTTP app's handlers answer it: `answer_to`)
        reply = error_message(tag, *answer_to(exc))
    await _send(ws, sending, reply)


async def _send(ws: WebSocket, sending: asyncio.Lock, reply: bytes | str) -> None:
    try:
        async with sending:
            if isinstance(reply, bytes):
                await ws.send_bytes(reply)
            else:
                await ws.send_text(reply)
    except (WebSocketDisconnect, RuntimeError, OSError) as exc:  # closed meanwhile: the edge no longer waits
        log.debug("could not answer on a closed channel: %s", exc)

"""The persistent frame channel's contract: one WebSocket per edge, frames of many sessions multiplexed on it.

One POST per decode step pays an HTTP request's parsing, routing and middleware on both tiers for every token:
on loopback a round trip that does no compute takes 0.79 ms over HTTP and 0.30 ms over the channel
(`bench/step_overhead.py`). A WebSocket opened once per edge pays them once: each step is then one binary
message each way.

Every edge-to-cloud message is a tag (4 bytes, little-endian, chosen by the edge) followed by one request frame
(`splitcore.wire`); the cloud answers each with a binary message of the same tag and the answer frame, or with a
text message, the JSON `{"tag", "status", "error"}` where `status` and `error` are what the HTTP route would have
answered (the OpenAI error body). Answers may come in any order: frames of different sessions run in one batch.
"""

from __future__ import annotations

import json
import struct

from splitcore.errors import FrameError
from splitcore.http import read_error

CHANNEL_PATH = "/v1/shard/channel"
_TAG = struct.Struct("<I")
TAG_BYTES = _TAG.size
MAX_TAG = 2**32 - 1


def pack(tag: int, frame: bytes) -> bytes:
    """A message: the tag, then the frame."""
    return _TAG.pack(tag) + frame


def unpack(message: bytes) -> tuple[int, bytes]:
    """The tag and the frame of a binary message.

    Raises:
        FrameError: the message is too short to hold a tag.
    """
    if len(message) < TAG_BYTES:
        raise FrameError(f"a channel message starts with a {TAG_BYTES}-byte tag; got {len(message)} bytes")
    return _TAG.unpack_from(message)[0], message[TAG_BYTES:]


def error_message(tag: int | None, status: int, body: dict) -> str:
    """The text message that answers a tagged frame with an error body (`splitcore.http.error_body`); `tag` None:
    the message had no readable tag."""
    return json.dumps({"tag": tag, "status": status, **body})


def parse_error(text: str) -> tuple[int | None, int, str, str | None]:
    """The tag, status, message and error type of an error message; a malformed one reads as a 502 (of its tag,
    when that much is readable)."""
    tag, error = None, read_error(text)
    try:
        body = json.loads(text)
        tag = body["tag"] if isinstance(body.get("tag"), int) else None
        if error is not None:
            return tag, int(body["status"]), *error
    except (ValueError, KeyError, TypeError, AttributeError):  # not our error message: keep its text
        pass
    return tag, 502, f"the cloud sent an unreadable channel message: {text[:200]!r}", None

"""Reading an OpenAI-style streamed completion: the JSON events of its server-sent `data:` lines."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

DONE = "[DONE]"  # the payload of the stream's last `data:` line


def data_events(lines: Iterable[str]) -> Iterator[dict | None]:
    """Each `data:` line's JSON event, in order, and None for the closing `data: [DONE]`; other lines (comments,
    blank separators) are skipped."""
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: "):]
            yield None if payload == DONE else json.loads(payload)

"""Reading a streamed completion's server-sent events."""

from __future__ import annotations

from edgesplit.sse import data_events


def test_data_lines_are_events_done_is_none_and_other_lines_are_skipped() -> None:
    lines = [": keep-alive", 'data: {"choices": [{"text": "a"}]}', "", 'data: {"usage": {"completion_tokens": 1}}',
             "", "data: [DONE]", ""]
    assert list(data_events(lines)) == [{"choices": [{"text": "a"}]}, {"usage": {"completion_tokens": 1}}, None]

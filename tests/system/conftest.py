"""Every system test runs over both frame transports: the WebSocket channel (the default) and one POST per step.

The edges these tests start (in process or as `edgesplit serve` subprocesses) read `EDGE_CLOUD_TRANSPORT`. The
HTTP runs are marked e2e, so the fast subset runs each behaviour once, over the default.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, params=["websocket", pytest.param("http", marks=pytest.mark.e2e)])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("EDGE_CLOUD_TRANSPORT", request.param)
    return str(request.param)

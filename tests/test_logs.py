"""What an operator reads: one line per refusal with its reason and request id, JSON lines on request, and no
access-log line for successful polling."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edgesplit.procs import free_port, serve, wait_healthy
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.errors import UserError
from splitcore.http import install_error_handlers
from splitcore.logs import QuietAccess, RequestIds, configure_logging

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging("edge", "info", "json", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestIds)

    @app.get("/refuse")
    async def refuse() -> None:
        raise UserError("temperature: out of range", param="temperature")

    @app.get("/fine")
    async def fine() -> dict:
        return {}

    return app


def test_a_refusal_logs_one_json_line_with_its_reason_and_request_id(json_log: io.StringIO) -> None:
    client = TestClient(_app())
    answer = client.get("/refuse", headers={"x-request-id": "req-42"})
    assert answer.status_code == 400 and answer.headers["x-request-id"] == "req-42"
    generated = client.get("/fine").headers["x-request-id"]
    assert len(generated) == 16 and generated != "req-42"
    assert client.get("/fine", headers={"x-request-id": "bad id\nwith newline"}).headers["x-request-id"] != ""
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    refusals = [x for x in lines if x["logger"] == "splitcore.http"]
    assert len(refusals) == 1
    assert refusals[0]["request_id"] == "req-42" and refusals[0]["tier"] == "edge"
    assert "GET /refuse -> 400 UserError: temperature: out of range" in refusals[0]["message"]


def test_successful_polling_stays_out_of_the_access_log() -> None:
    quiet = QuietAccess()

    def record(method: str, path: str, status: int) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                                 ("127.0.0.1:1", method, path, "1.1", status), None)

    assert not quiet.filter(record("GET", "/health", 200))
    assert not quiet.filter(record("GET", "/metrics", 200))
    assert not quiet.filter(record("GET", "/admin/requests", 200))
    assert quiet.filter(record("GET", "/health", 503))  # a failing check is news
    assert quiet.filter(record("POST", "/v1/completions", 200))
    assert quiet.filter(record("GET", "/admin/plan", 401))


@pytest.mark.e2e
def test_a_served_edge_logs_json_and_each_refusal_once_and_reports_its_status(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "edge.log"
    args = ["--model", str(ROOT / DEFAULT_MODEL_DIR), "--log-format", "json"]
    with serve("edge", args, port, log, env={"EDGE_ADMIN_TOKEN": "operator"}) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health", proc)
        for _ in range(5):
            httpx.get(f"{url}/health")
            httpx.get(f"{url}/metrics")
        bad = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "temperature": 9},
                         headers={"x-request-id": "op-1"})
        assert bad.status_code == 400
        ok = httpx.post(f"{url}/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, timeout=60)
        assert ok.status_code == 200
        status = _status(url, {"EDGE_ADMIN_TOKEN": "operator"})
        assert status.returncode == 0 and "edge-only" in status.stdout and "link estimate" in status.stdout
        assert "completion" in status.stdout and "3 tokens" in status.stdout
        blind = _status(url, {"EDGE_ADMIN_TOKEN": ""})
        assert blind.returncode == 0 and "set EDGE_ADMIN_TOKEN" in blind.stdout
        time.sleep(0.5)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all(x["tier"] == "edge" for x in lines)
    mine = [x for x in lines if x["request_id"] == "op-1"]
    reasons = [x for x in mine if x["logger"] == "splitcore.http"]
    assert len(reasons) == 1 and "temperature" in reasons[0]["message"] and "-> 400" in reasons[0]["message"]
    assert not any("/health" in x["message"] or "/metrics" in x["message"] for x in lines)
    assert "Hello" not in log.read_text()  # no prompt text in the log


def _status(url: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgesplit.cli", "status", url], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})

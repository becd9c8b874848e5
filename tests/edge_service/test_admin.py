"""The admin API: token checks, setting a plan by hand, searching, refusing bad input; and /metrics."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from edge_service.app import create_app as create_edge
from edge_service.settings import EdgeSettings
from splitcore.loading import LoadedModel
from splitcore.testing import reference_text
from tests.fakes import Clock
from tests.servers import LoopbackServer, edge_and_cloud, metric_samples
from tests.waiting import poll

TOKEN = "s3cret-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def urls(models: dict[str, LoadedModel]) -> Iterator[tuple[str, str]]:
    loaded = models["gpt2"]
    with edge_and_cloud(loaded, cut="edge", admin_token=TOKEN, probe_interval_s=0.3) as tiers:
        yield tiers.edge_url, tiers.cloud_url


def test_admin_routes_need_the_token(urls: tuple[str, str]) -> None:
    edge, _ = urls
    for method, path in [("GET", "/admin/plan"), ("POST", "/admin/plan"), ("GET", "/admin/profile"),
                         ("GET", "/admin/bandwidth"), ("GET", "/admin/requests")]:
        none = httpx.request(method, edge + path, json={"search": True})
        assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer", path
        assert none.json()["error"]["type"] == "authentication_error"
        wrong = httpx.request(method, edge + path, json={"search": True}, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 403 and wrong.json()["error"]["message"] == "wrong admin token", path
    assert httpx.get(edge + "/admin/plan", headers=AUTH).status_code == 200


def test_the_dashboard_asks_for_the_token_and_the_login_sets_a_cookie(urls: tuple[str, str]) -> None:
    edge, _ = urls
    page = httpx.get(edge + "/admin/dashboard")
    assert page.status_code == 401 and 'name="token"' in page.text
    assert httpx.post(edge + "/admin/login", data={"token": "nope"}).status_code == 403
    with httpx.Client(base_url=edge) as browser:
        login = browser.post("/admin/login", data={"token": TOKEN})
        assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
        assert "samesite=strict" in login.headers["set-cookie"].lower()
        page = browser.get("/admin/dashboard")
        assert page.status_code == 200 and 'id="plan-drawing"' in page.text
        assert browser.get("/admin/plan").status_code == 200  # the cookie works for the page's own calls


def test_an_edge_without_an_admin_token_switches_the_admin_api_off(models: dict[str, LoadedModel]) -> None:
    with LoopbackServer(create_edge(EdgeSettings(cut="edge"), models["gpt2"])) as edge:
        r = httpx.get(edge + "/admin/plan", headers=AUTH)
        assert r.status_code == 403 and "EDGE_ADMIN_TOKEN" in r.json()["error"]["message"]


def test_a_plan_set_by_hand_serves_new_requests_exactly(urls: tuple[str, str], models: dict[str, LoadedModel]) -> None:
    edge, _ = urls
    loaded = models["gpt2"]
    r = httpx.post(edge + "/admin/plan", json={"cut": "1:3", "codec": "fp32"}, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["plan"]["cut_a"] == 1 and r.json()["changed"]
    plan = httpx.get(edge + "/admin/plan", headers=AUTH).json()
    assert plan["plan"]["cut_b"] == 3 and plan["changes"][-1]["reason"] == "admin"
    assert httpx.get(edge + "/health").json()["cut"] == [1, 3]
    ids = loaded.tokenizer.encode("an operator repartitions")
    out = httpx.post(edge + "/v1/completions", json={"prompt": ids, "max_tokens": 8, "temperature": 0},
                     timeout=60).json()
    assert out["edgesplit"]["cut"] == [1, 3] and out["edgesplit"]["link"]["decode_tokens"] == 7
    assert out["choices"][0]["text"] == reference_text(loaded, ids, 8)
    again = httpx.post(edge + "/admin/plan", json={"cut": "1:3", "codec": "fp32"}, headers=AUTH, timeout=30)
    assert again.status_code == 200 and not again.json()["changed"]
    httpx.post(edge + "/admin/plan", json={"cut": "edge"}, headers=AUTH, timeout=30)


def test_a_search_reports_and_applies_the_best_plan_for_a_given_link(urls: tuple[str, str]) -> None:
    edge, _ = urls
    body = {"search": True, "apply": False, "bandwidth_bps": 1e6, "rtt_ms": 300, "workload": "16:8"}
    r = httpx.post(edge + "/admin/plan", json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert not out["changed"] and set(out["baselines"]) >= {"edge-only", "cloud-only"}
    assert out["estimate"]["total_ms"] <= min(b["total_ms"] for b in out["baselines"].values() if b["feasible"])
    applied = httpx.post(edge + "/admin/plan", json={**body, "apply": True}, headers=AUTH, timeout=120).json()
    assert httpx.get(edge + "/admin/plan", headers=AUTH).json()["describe"] == applied["describe"]
    profiles = httpx.get(edge + "/admin/profile", headers=AUTH, timeout=120).json()
    assert profiles["edge"]["device_name"] == "edge" and profiles["cloud"]["device_name"] == "cloud"
    httpx.post(edge + "/admin/plan", json={"cut": "edge"}, headers=AUTH, timeout=30)


@pytest.mark.parametrize(("body", "status", "words"), [
    ({}, 400, "either 'cut'"),
    ({"cut": "1:3", "search": True}, 400, "either 'cut'"),
    ({"cut": "9:2"}, 422, "cuts must satisfy"),
    ({"cut": "middle"}, 422, "cannot read cut"),
    ({"cut": "1:3", "codec": "fp8"}, 400, "codec"),
    ({"cut": "0:4", "head": "cloud"}, 422, "privacy"),
    ({"search": True, "bandwidth_bps": 1e6}, 400, "both bandwidth_bps and rtt_ms"),
    ({"search": True, "workload": "lots"}, 400, "workload"),
    ({"search": True, "constraints": {"min_edge_layers": 9}}, 422, "min_edge_layers"),
    ({"search": True, "constraints": {"edge_memory_mb": 1.7e308}}, 400, "edge_memory_mb"),  # found by the fuzzer
    ({"search": True, "bandwidth_bps": 1e300, "rtt_ms": 1e300}, 400, "bandwidth_bps"),
    ({"cut": "1:3", "surprise": 1}, 400, "surprise"),
])
def test_bad_plan_requests_are_refused_with_a_reason(urls: tuple[str, str], body: dict, status: int,
                                                     words: str) -> None:
    edge, _ = urls
    r = httpx.post(edge + "/admin/plan", json=body, headers=AUTH, timeout=60)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_bandwidth_history_and_metrics_are_served(urls: tuple[str, str], models: dict[str, LoadedModel]) -> None:
    edge, cloud = urls
    httpx.post(edge + "/v1/completions", json={"prompt": "metrics", "max_tokens": 4, "temperature": 0}, timeout=60)
    # a re-plan check records a history point every second (later under load)
    bw = poll(lambda: httpx.get(edge + "/admin/bandwidth", headers=AUTH).json(), lambda b: b["history"], 15)
    assert bw["estimate"]["samples"] > 0 and len(bw["history"]) >= 1
    requests = httpx.get(edge + "/admin/requests", headers=AUTH).json()["requests"]
    assert requests and requests[-1]["output_tokens"] >= 1
    text = metric_samples(edge)
    for name in ["edgesplit_edge_time_to_first_token_seconds_bucket", "edgesplit_edge_inter_token_latency_seconds_sum",
                 "edgesplit_edge_request_duration_seconds_count", "edgesplit_edge_link_bytes_total",
                 "edgesplit_edge_plan_changes_total", "edgesplit_edge_link_bandwidth_bits_per_second",
                 "edgesplit_edge_prompt_tokens_total", "edgesplit_edge_generation_tokens_total",
                 "edgesplit_edge_request_prompt_tokens_bucket", "edgesplit_edge_request_generation_tokens_bucket",
                 "edgesplit_edge_num_requests_running", "edgesplit_edge_num_requests_waiting",
                 "edgesplit_edge_batch_size_bucket"]:
        assert name in text, name
    assert [s.value for s in text["edgesplit_edge_active_requests"]] == [0.0]
    assert [s.value for s in text["edgesplit_edge_num_requests_running"]] == [0.0]
    assert [s.value for s in text["edgesplit_edge_num_requests_waiting"]] == [0.0]
    assert text["edgesplit_edge_generation_tokens_total"][0].value >= 1
    assert all(s.labels["model_name"] == models["gpt2"].name for series in text.values() for s in series)
    cloud_text = metric_samples(cloud)
    for name in ["edgesplit_cloud_step_duration_seconds_bucket", "edgesplit_cloud_active_sessions",
                 "edgesplit_cloud_link_bytes_total", "edgesplit_cloud_cache_bytes",
                 "edgesplit_cloud_batch_size_bucket", "edgesplit_cloud_batch_queue_wait_seconds_bucket",
                 "edgesplit_cloud_batch_current_size", "edgesplit_cloud_batch_forward_seconds_bucket",
                 "edgesplit_cloud_session_evictions_total", "edgesplit_cloud_kv_cache_usage_ratio",
                 "edgesplit_cloud_num_requests_running", "edgesplit_cloud_num_requests_waiting"]:
        assert name in cloud_text, name
    assert {s.labels["direction"] for s in cloud_text["edgesplit_cloud_link_bytes_total"]} >= {"received"}
    batching = httpx.get(edge + "/admin/batching", headers=AUTH).json()
    assert batching["edge"]["batch_size"] >= 1  # this edge runs every block ("edge" cut)
    assert batching["cloud"]["batch_size"] >= 0 and "sessions" in batching["cloud"]


def test_the_cookie_is_a_signed_expiring_session_never_the_token_and_sign_out_drops_it(urls: tuple[str, str]) -> None:
    edge, _ = urls
    with httpx.Client(base_url=edge) as browser:
        login = browser.post("/admin/login", data={"token": TOKEN})
        cookie = login.headers["set-cookie"]
        assert TOKEN not in cookie and "max-age=28800" in cookie.lower() and "secure" not in cookie.lower()
        value = browser.cookies["edgesplit_admin"]
        expiry, _, signature = value.partition(".")
        forged = f"{int(expiry) + 3600}.{signature}"
        assert httpx.get(edge + "/admin/plan", cookies={"edgesplit_admin": forged}).status_code == 401
        out = browser.post("/admin/logout")
        assert out.status_code == 303 and out.headers["location"] == "/admin/login"
        assert browser.get("/admin/plan").status_code == 401


def test_a_sign_in_served_over_tls_gets_a_secure_cookie_and_a_wrong_token_the_form_again(
        models: dict[str, LoadedModel]) -> None:
    settings = EdgeSettings(cut="edge", admin_token=TOKEN, ssl_certfile="edge.pem", ssl_keyfile="edge.key")
    with LoopbackServer(create_edge(settings, models["gpt2"])) as edge:  # TLS is uvicorn's; the flag is the app's
        assert "secure" in httpx.post(edge + "/admin/login", data={"token": TOKEN}).headers["set-cookie"].lower()
        wrong = httpx.post(edge + "/admin/login", data={"token": "nope"})
        assert wrong.status_code == 403 and 'id="message"' in wrong.text and "wrong admin token" in wrong.text


def test_wrong_admin_tokens_are_answered_ever_more_slowly_until_the_right_one() -> None:
    import asyncio
    import time

    from pydantic import SecretStr
    from starlette.requests import Request

    from edge_service.admin_auth import AdminGuard
    from splitcore.errors import AuthenticationError, PermissionDeniedError

    clock = Clock()
    guard = AdminGuard(SecretStr(TOKEN), session_s=60, clock=clock)

    def request(token: str = "", cookie: str = "") -> Request:
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        if cookie:
            headers.append((b"cookie", f"edgesplit_admin={cookie}".encode()))
        return Request({"type": "http", "headers": headers, "client": ("10.0.0.9", 1)})

    waits = []
    for _ in range(4):
        started = time.perf_counter()
        with pytest.raises(PermissionDeniedError):
            asyncio.run(guard.check(request("nope")))
        waits.append(time.perf_counter() - started)
    assert waits[0] >= 0.04 and waits[3] >= 0.35 and waits == sorted(waits)
    asyncio.run(guard.check(request(TOKEN)))  # the right token resets the address
    started = time.perf_counter()
    with pytest.raises(PermissionDeniedError):
        asyncio.run(guard.check(request("nope")))
    assert time.perf_counter() - started < 0.2
    session = guard.cookie()
    asyncio.run(guard.check(request(cookie=session)))
    clock.now += 61  # past the session's expiry: asked again, without penalty
    with pytest.raises(AuthenticationError):
        asyncio.run(guard.check(request(cookie=session)))


def test_an_operator_sets_the_speculation_depth_live(urls: tuple[str, str], models: dict[str, LoadedModel]) -> None:
    edge, _ = urls
    loaded = models["gpt2"]
    assert httpx.get(edge + "/admin/plan", headers=AUTH).json()["speculate"] == "auto"  # the default
    bad = httpx.post(edge + "/admin/plan", json={"speculate": "99"}, headers=AUTH)
    assert bad.status_code == 400 and "speculate" in bad.text
    set_ = httpx.post(edge + "/admin/plan", json={"speculate": "3", "cut": "1:3", "codec": "fp32"}, headers=AUTH,
                      timeout=30)
    assert set_.status_code == 200 and httpx.get(edge + "/admin/plan", headers=AUTH).json()["speculate"] == "3"
    try:
        ids = loaded.tokenizer.encode("an operator speculates")
        out = httpx.post(edge + "/v1/completions", json={"prompt": ids, "max_tokens": 8, "temperature": 0},
                         timeout=60).json()
        assert out["edgesplit"]["speculation"]["depth"] == 3
        assert out["choices"][0]["text"] == reference_text(loaded, ids, 8)
    finally:
        off = httpx.post(edge + "/admin/plan", json={"speculate": "off"}, headers=AUTH)
        httpx.post(edge + "/admin/plan", json={"speculate": "auto", "cut": "edge"}, headers=AUTH, timeout=30)
    assert off.json() == {"changed": True, "speculate": "off"}

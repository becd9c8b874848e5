"""`--plan auto`: the edge probes the link, fetches the cloud's profile, searches, and serves exactly."""

from __future__ import annotations

import httpx

from cloud_service.app import create_app as create_cloud
from cloud_service.settings import CloudSettings
from edge_service.app import create_app as create_edge
from edge_service.settings import EdgeSettings
from profiling.profile import Profile
from splitcore.loading import LoadedModel
from splitcore.testing import reference_text
from tests.servers import LoopbackServer, edge_and_cloud
from tests.waiting import poll


def test_the_cloud_serves_its_profile_and_a_probe(models: dict[str, LoadedModel]) -> None:
    loaded = models["gpt2"]
    with LoopbackServer(create_cloud(CloudSettings(), loaded)) as url:
        profile = Profile.model_validate(httpx.get(f"{url}/profile", timeout=120).json())
        assert profile.fingerprint == loaded.fingerprint and profile.device_name == "cloud"
        assert httpx.post(f"{url}/v1/probe", content=b"\0" * 100_000).status_code == 204


def test_an_auto_planned_edge_serves_the_unsplit_models_tokens(models: dict[str, LoadedModel]) -> None:
    loaded = models["gpt2"]
    with edge_and_cloud(loaded, cut="auto", codec="fp32", min_edge_layers=1) as tiers:
        url = tiers.edge_url
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["cut"][0] >= 1
        ids = loaded.tokenizer.encode("The edge keeps")
        out = httpx.post(f"{url}/v1/completions", json={"prompt": ids, "max_tokens": 8, "temperature": 0},
                         timeout=60).json()
        assert out["choices"][0]["text"] == reference_text(loaded, ids, 8)


def test_an_auto_planned_edge_without_a_cloud_serves_edge_only(models: dict[str, LoadedModel]) -> None:
    from edgesplit.procs import free_port

    settings = EdgeSettings(cloud_url=f"http://127.0.0.1:{free_port()}", cut="auto", cloud_connect_timeout_s=0.5)
    with LoopbackServer(create_edge(settings, models["gpt2"])) as url:
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["plan"].startswith("edge-only")


def test_an_idle_adaptive_edge_probes_the_link_to_keep_its_estimate_fresh(models: dict[str, LoadedModel]) -> None:
    loaded = models["gpt2"]
    with edge_and_cloud(loaded, cut="auto", probe_interval_s=0.2) as tiers:
        link = tiers.edge_app.state.runtime.link
        at_start = link.bytes_observed  # the start-up probes the search planned on
        poll(lambda: link.bytes_observed, lambda seen: seen != at_start, 10, 0.05)
        estimate = link.estimate()
        assert link.bytes_observed > at_start and estimate.rtt_ms < 50

"""The link estimate agrees with the link, and an idle edge does not spend it on probes.

Real exchanges teach the estimate (the cloud reports its whole time on each step, so only the wire is left);
an idle edge probes only when its plan can change, and backs off.
"""

from __future__ import annotations

import time

import httpx
import pytest

from edgesplit.tools.linkbench import LINKS
from edgesplit.tools.linkemu import LinkEmulator
from splitcore.loading import LoadedModel
from tests.servers import LoopbackServer, edge_and_cloud, metric_samples

PROMPTS = [list(range(10, 10 + n)) for n in (8, 120, 16, 200, 40, 160)]


def _probe_bytes(url: str, tier: str) -> float:
    (sample,) = metric_samples(url)[f"edgesplit_{tier}_link_probe_bytes_total"]
    return sample.value


@pytest.mark.e2e
def test_a_static_plan_sends_no_probes_over_ten_idle_seconds(models: dict[str, LoadedModel]) -> None:
    with edge_and_cloud(models["gpt2"], cut="1:3", probe_interval_s=0.2) as tiers:
        httpx.post(f"{tiers.edge_url}/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 3}, timeout=30)
        time.sleep(10)
        assert _probe_bytes(tiers.edge_url, "edge") == 0
        assert _probe_bytes(tiers.cloud_url, "cloud") == 0


@pytest.mark.e2e
def test_an_adaptive_edge_backs_off_its_idle_probes_to_the_budget(models: dict[str, LoadedModel]) -> None:
    budget = 2048.0
    # The first idle probe waits 1 s after start-up: at 0.2 s it raced the reading of `start` below (the server
    # was up and answering 0.15-0.2 s after the loop began), and when it won the window saw no idle probe.
    with edge_and_cloud(models["gpt2"], cut="auto", probe_interval_s=1.0,
                        probe_budget_bytes_per_s=budget) as tiers:
        httpx.get(f"{tiers.edge_url}/health", timeout=60)
        start = _probe_bytes(tiers.edge_url, "edge")
        time.sleep(10)
        idle = _probe_bytes(tiers.edge_url, "edge") - start
        assert _probe_bytes(tiers.cloud_url, "cloud") == _probe_bytes(tiers.edge_url, "edge")  # both count them
    # The first idle probe goes after 1 s (at most 256 KiB); the next waits until the average is in budget.
    assert 0 < idle <= 256 * 1024 + 64 + budget * 10


@pytest.mark.parametrize("link", ["LTE", "Wi-Fi"])
def test_real_traffic_alone_estimates_an_emulated_links_bandwidth_within_2x(models: dict[str, LoadedModel],
                                                                             link: str) -> None:
    bandwidth, rtt = LINKS[link]
    loaded = models["gpt2"]
    from cloud_service.app import create_app as create_cloud
    from cloud_service.settings import CloudSettings
    from edge_service.app import create_app as create_edge
    from edge_service.settings import EdgeSettings

    with LoopbackServer(create_cloud(CloudSettings(), loaded)) as cloud_url, \
            LinkEmulator(int(cloud_url.rsplit(":", 1)[1]), bandwidth, rtt) as port:
        edge = create_edge(EdgeSettings(cloud_url=f"http://127.0.0.1:{port}", cut="1:3", codec="fp32"), loaded)
        with LoopbackServer(edge) as edge_url:
            for prompt in PROMPTS:
                answer = httpx.post(f"{edge_url}/v1/completions", json={"prompt": prompt, "max_tokens": 4},
                                    timeout=60)
                assert answer.status_code == 200, answer.text
            estimate = edge.state.runtime.link.estimate()
            assert _probe_bytes(edge_url, "edge") == 0  # a static plan: what it knows came from real frames
    assert bandwidth / 2 <= estimate.bandwidth_bps <= bandwidth * 2, estimate
    assert rtt / 2 <= estimate.rtt_ms <= rtt * 2, estimate

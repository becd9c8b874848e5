"""Live repartitioning across real processes: the link degrades mid-run and recovers; the edge follows on its own,
every request in flight completes, and greedy outputs stay those of the unsplit model.

The shipped model with the edge emulated 6x slower than the cloud (sleeping after its compute, and its profile
scaled to match): on a fast link the planner sends most blocks to the cloud, on a slow one it keeps them home.
Activations cross in fp32 (`--max-codec-loss 0`), so every plan is exact.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from edgesplit.tools.scenario import Traffic, deployment, wait_for
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.loading import load_checkpoint
from splitcore.testing import reference_text

pytestmark = pytest.mark.e2e  # spawns processes, drives a browser or fuzzes: out of the fast loop (-m 'not e2e')

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["And it came to pass", "In the beginning God", "The LORD is my shepherd", "Blessed are the"]
MAX_TOKENS = 16
FAST, SLOW = (1e9, 1.0), (20e6, 40.0)  # (bits/s, rtt ms)


def reference_texts() -> dict[str, str]:
    loaded = load_checkpoint(ROOT / DEFAULT_MODEL_DIR)
    return {prompt: reference_text(loaded, prompt, MAX_TOKENS) for prompt in PROMPTS}


def test_the_edge_repartitions_on_its_own_when_the_link_changes(tmp_path: Path) -> None:
    expected = reference_texts()
    edge_args = ["--plan", "auto", "--edge-profile", str(ROOT / "profiles/edge-1thread-default.json"),
                 "--emulate-slowdown", "6", "--max-codec-loss", "0", "--workload", "32:16", "--threads", "1",
                 "--probe-interval-s", "1"]
    cloud_args = ["--threads", "1", "--profile", str(ROOT / "profiles/cloud-default.json")]
    with deployment(ROOT / DEFAULT_MODEL_DIR, edge_args, tmp_path, *FAST, cloud_args=cloud_args) as dep:
        start = dep.plan()
        assert start["plan"]["cut_a"] < start["plan"]["cut_b"], f"expected a split on a fast link: {start}"
        with Traffic(dep.edge_url, PROMPTS, MAX_TOKENS, clients=2) as traffic:
            time.sleep(3)
            dep.link.set(*SLOW)
            to_edge = wait_for(lambda: not _uses_cloud(dep.plan()), timeout_s=20)
            assert to_edge is not None, f"no repartition within 20 s of the link degrading: {dep.plan()}"
            time.sleep(3)
            dep.link.set(*FAST)
            back = wait_for(lambda: _uses_cloud(dep.plan()), timeout_s=30)
            assert back is not None, f"no repartition within 30 s of the link recovering: {dep.plan()}"
            time.sleep(2)
        changes = dep.plan()["changes"]
        metrics = _get(dep.edge_url + "/metrics")
    results = traffic.results
    assert to_edge < 10, f"took {to_edge:.1f} s to leave the degraded link"
    assert [c["reason"] for c in changes][-2:] == ["link", "link"]
    failed = [r for r in results if r.error or r.status != 200]
    assert not failed, failed[:3]
    wrong = [(r.prompt, r.text, expected[r.prompt]) for r in results if r.text != expected[r.prompt]]
    assert not wrong, wrong[:3]
    plans_seen = {tuple(r.cut) for r in results if r.cut}
    assert any(a == b for a, b in plans_seen) and any(a < b for a, b in plans_seen), plans_seen
    assert re.search(r'^edgesplit_edge_plan_changes_total\{[^}]*reason="link"[^}]*\} 2\.0$', metrics, re.M), metrics


def _uses_cloud(plan: dict) -> bool:
    return bool(plan["plan"]["cut_a"] < plan["plan"]["cut_b"])


def _get(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=10).text

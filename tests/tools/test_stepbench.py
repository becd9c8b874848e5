"""The step-overhead benchmark end to end on the shipped model: a spawned cloud, an edge-only edge and a split
edge per transport, and a report with each transport's overhead and floor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesplit.tools import stepbench

pytestmark = pytest.mark.e2e  # spawns a cloud and three edges


def test_the_step_benchmark_reports_each_transports_overhead_against_its_floor(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    stepbench.main(["--models", "default", "--tokens", "12", "--repeats", "1", "--probe-rounds", "3",
                    "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["cut"] == "2:6" and row["monolithic_ms_per_token"] > 0 and row["edge_only_ms_per_token"] > 0
    assert set(row["transports"]) == {"websocket", "http"}
    for t in row["transports"].values():
        assert t["split_ms_per_token"] > 0 and t["transport_floor_ms"] > 0
        assert t["overhead_ms_per_step"] == pytest.approx(t["split_ms_per_token"] - row["edge_only_ms_per_token"])

"""The batching benchmark end to end on the shipped model: a spawned cloud, emulated edges, a report and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesplit.tools import batchbench

pytestmark = pytest.mark.e2e  # spawns a cloud process


def test_the_batching_benchmark_reports_every_plan_and_level_with_no_failure(tmp_path: Path) -> None:
    out = tmp_path / "batching.json"
    batchbench.main(["--models", "default", "--streams", "1", "3", "--duration-s", "1.5", "--prompt-tokens", "8",
                     "--output-tokens", "4", "--out", str(out)])
    (model,) = json.loads(out.read_text())["models"]
    assert set(model["monolithic_tokens_per_s"]) == {"1", "3"}
    assert len(model["plans"]) == 2  # cloud-only and a mid cut
    for rows in model["plans"].values():
        assert [r["streams"] for r in rows] == [1, 3]
        for r in rows:
            assert r["failed"] == 0 and r["generations"] >= 1 and r["output_tokens_per_s"] > 0
            assert r["ttft_ms"]["p50"] is not None
            assert r["predicted"]["tokens_per_s"] > 0 and r["predicted"]["tpot_ms"] > 0  # the cost model's figure
            # the cloud's own account of the level (its /metrics): compute is part of each step, not all of it
            assert 0 < r["cloud_forward_ms_per_step"] < r["cloud_wall_ms_per_step"] and r["cloud_rows_per_round"] >= 1
        assert rows[0]["x_one_stream"] == 1.0
    assert out.with_suffix(".png").stat().st_size > 10_000

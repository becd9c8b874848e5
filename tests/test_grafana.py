"""The Grafana dashboard under deploy/ charts only series the tiers export, each with units and its model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from splitcore.loading import LoadedModel
from tests.servers import edge_and_cloud, metric_samples

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana-dashboard.json"


def _exported(url: str) -> dict[str, set[str]]:
    """Each sample name on `url`'s /metrics, with the label names it carries."""
    return {name: {label for s in samples for label in s.labels} for name, samples in metric_samples(url).items()}


def test_every_series_the_dashboard_queries_is_exported_with_its_model(models: dict[str, LoadedModel]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {name for expr in exprs for name in re.findall(r"\bedgesplit_[a-z0-9_]+", expr)}
    assert len(queried) >= 20
    with edge_and_cloud(models["gpt2"], cut="1:3", codec="int8") as tiers:
        answer = httpx.post(f"{tiers.edge_url}/v1/completions", json={"prompt": "Grafana", "max_tokens": 4},
                            timeout=60)
        assert answer.status_code == 200
        httpx.post(f"{tiers.cloud_url}/v1/shard/forward", content=b"not a frame")  # a refused frame, counted
        exported = _exported(tiers.edge_url) | _exported(tiers.cloud_url)
    missing = sorted(queried - set(exported))
    assert not missing, f"the dashboard queries series no tier exports: {missing}"
    assert all("model_name" in exported[name] for name in queried)
    assert all('model_name=~"$model_name"' in expr for expr in exprs)


def test_every_panel_has_a_unit_an_axis_label_and_a_description() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"] and defaults["custom"]["axisLabel"], panel["title"]
        assert panel["description"] and panel["targets"], panel["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "model_name"}

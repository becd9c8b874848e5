"""Plans, cut specs and layer ranges."""

from __future__ import annotations

import pytest

from splitcore.errors import PlanError
from splitcore.plan import Plan, parse_cut
from splitcore.ranges import LayerRange


def test_a_u_shaped_cut_gives_three_half_open_ranges() -> None:
    plan = parse_cut("2:5", 8)
    assert (plan.edge_front, plan.cloud_layers, plan.edge_back) == (
        LayerRange(start=0, end=2), LayerRange(start=2, end=5), LayerRange(start=5, end=8))
    assert plan.uses_cloud and not plan.tokens_leave_device


@pytest.mark.parametrize(("spec", "a", "b", "head", "tokens_leave"), [
    ("edge", 8, 8, "edge", False),
    ("cloud", 0, 8, "cloud", True),
    ("3", 3, 8, "edge", False),
    ("0:4", 0, 4, "edge", True),
])
def test_cut_specs(spec: str, a: int, b: int, head: str, tokens_leave: bool) -> None:
    plan = parse_cut(spec, 8)
    assert (plan.cut_a, plan.cut_b, plan.head, plan.tokens_leave_device) == (a, b, head, tokens_leave)


def test_edge_only_plans_do_not_use_the_cloud() -> None:
    assert not parse_cut("edge", 8).uses_cloud
    assert not parse_cut("3:3", 8).uses_cloud


@pytest.mark.parametrize(("spec", "match"), [("5:2", "a <= b"), ("2:9", "a <= b"), ("x", "cannot read")])
def test_bad_cut_specs_are_refused_with_the_rule(spec: str, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        parse_cut(spec, 8)


def test_the_head_runs_in_the_cloud_only_after_the_last_block() -> None:
    with pytest.raises(PlanError, match="last block"):
        Plan(num_layers=8, cut_a=2, cut_b=5, head="cloud")


def test_layer_ranges_are_half_open() -> None:
    r = LayerRange(start=2, end=5)
    assert len(r) == 3 and list(r) == [2, 3, 4] and str(r) == "[2, 5)"
    assert LayerRange(start=3, end=4).within(r) and not LayerRange(start=4, end=6).within(r)
    with pytest.raises(ValueError, match="start <= end"):
        LayerRange(start=3, end=2)


def test_privacy_is_checked_in_one_place_for_every_way_a_plan_is_set() -> None:
    from splitcore.plan import parse_cut

    for spec in ("cloud", "0:4"):
        with pytest.raises(PlanError, match="allow-tokens-off-device"):
            parse_cut(spec, 4).check_privacy(allow_tokens_off_device=False)
        parse_cut(spec, 4).check_privacy(allow_tokens_off_device=True)
    parse_cut("1:3", 4).check_privacy(allow_tokens_off_device=False)  # block 0 and the head stay on the device

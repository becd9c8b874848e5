"""A tier's OpenMP setting: a bounded spin unless the operator chose, and the same for the processes it starts."""

from __future__ import annotations

from splitcore.openmp import IDLE_SPIN, openmp_env, openmp_passed_on


def test_a_tier_spins_briefly_then_sleeps_unless_the_operator_chose() -> None:
    assert openmp_env({}) == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(IDLE_SPIN)}
    assert openmp_env({"OMP_WAIT_POLICY": "ACTIVE"}) == {}
    assert openmp_env({"GOMP_SPINCOUNT": "0"}) == {}


def test_replicas_get_the_operator_s_choice_or_the_tier_s_default() -> None:
    assert openmp_passed_on({"GOMP_SPINCOUNT": "0", "PATH": "/bin"}) == {"GOMP_SPINCOUNT": "0"}
    assert openmp_passed_on({}) == openmp_env({})

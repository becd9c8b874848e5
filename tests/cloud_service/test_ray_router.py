"""The session router's memory (`cloud_service.ray_router.Pins`): a session stays on its replica while both
live; idle or surplus sessions are forgotten; a dead replica's sessions all at once."""

from __future__ import annotations

from cloud_service.ray_router import Pins


def test_a_session_stays_on_the_replica_that_took_it() -> None:
    pins: Pins[str] = Pins(ttl_s=10)
    pins.pin("s1", "r1", now=0)
    pins.pin("s2", "r2", now=1)
    pins.pin("s1", "r1", now=2)
    assert (pins.get("s1"), pins.get("s2"), pins.get("s3")) == ("r1", "r2", None)


def test_sessions_idle_past_the_ttl_are_forgotten_and_used_ones_kept() -> None:
    pins: Pins[str] = Pins(ttl_s=10)
    pins.pin("idle", "r1", now=0)
    pins.pin("busy", "r1", now=0)
    pins.pin("busy", "r1", now=8)
    pins.pin("new", "r2", now=11)
    assert pins.get("idle") is None and pins.get("busy") == "r1" and pins.get("new") == "r2"


def test_beyond_the_cap_the_least_recently_used_session_goes_first() -> None:
    pins: Pins[str] = Pins(ttl_s=100, max_sessions=2)
    pins.pin("a", "r1", now=0)
    pins.pin("b", "r1", now=1)
    pins.pin("a", "r1", now=2)
    pins.pin("c", "r2", now=3)
    assert (pins.get("a"), pins.get("b"), pins.get("c")) == ("r1", None, "r2") and len(pins) == 2


def test_a_dead_replica_takes_only_its_own_sessions_with_it() -> None:
    pins: Pins[str] = Pins(ttl_s=100)
    for i, replica in enumerate(["r1", "r2", "r1", "r3"]):
        pins.pin(f"s{i}", replica, now=i)
    assert pins.forget("r1") == 2
    assert [pins.get(f"s{i}") for i in range(4)] == [None, "r2", None, "r3"]

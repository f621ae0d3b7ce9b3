"""The restart rules alone: no kernel, no event loop, an injected clock."""

from __future__ import annotations

import pytest

from kernelkeeper import ConfigurationError
from kernelkeeper.policy import Action, Failure, RestartPolicy, RestartTracker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def tracker(**kw: object) -> tuple[RestartTracker, Clock]:
    clock = Clock()
    kw.setdefault("restart_on_death", True)
    t = RestartTracker(RestartPolicy(**kw), clock=clock)  # type: ignore[arg-type]
    t.started()
    return t, clock


def test_defaults_restart_nothing() -> None:
    t = RestartTracker(RestartPolicy())
    t.started()
    for kind in ("died", "hung"):
        d = t.decide(kind)
        assert d.action is Action.IGNORE and kind in d.why
    assert t.restarts == 0


def test_death_and_hang_are_separate_switches() -> None:
    t, _ = tracker(restart_on_death=False, restart_on_hang=True)
    assert t.decide("died").action is Action.IGNORE
    assert t.decide("hung").action is Action.RESTART
    t, _ = tracker(restart_on_death=True, restart_on_hang=False)
    assert t.decide("hung").action is Action.IGNORE
    assert t.decide("died").action is Action.RESTART


def test_quick_deaths_count_up_to_the_limit() -> None:
    t, clock = tracker(restart_limit=3, stable_start_time=10)
    for n in (1, 2, 3):
        clock.advance(1)  # dies 1 s after each (re)start: never a stable run
        d = t.decide("died")
        assert (d.action, d.attempt, d.limit) == (Action.RESTART, n, 3)
        t.started()
    clock.advance(1)
    d = t.decide("died")
    assert d.action is Action.GIVE_UP
    assert d.attempt == 3 and "limit" in d.why
    assert t.decide("died").action is Action.GIVE_UP  # and stays given up


def test_a_stable_run_forgives_earlier_restarts() -> None:
    t, clock = tracker(restart_limit=2, stable_start_time=10)
    for _ in range(2):
        clock.advance(1)
        assert t.decide("died").action is Action.RESTART
        t.started()
    clock.advance(9.9)  # still within the stable start time: counts
    assert t.decide("died").action is Action.GIVE_UP

    t, clock = tracker(restart_limit=2, stable_start_time=10)
    for _ in range(2):
        clock.advance(1)
        assert t.decide("died").action is Action.RESTART
        t.started()
    clock.advance(10)  # ran for the whole stable start time: a fresh count
    d = t.decide("died")
    assert (d.action, d.attempt) == (Action.RESTART, 1)


def test_restarts_older_than_the_window_expire() -> None:
    t, clock = tracker(restart_limit=2, window=60, stable_start_time=100)
    assert t.decide("died").action is Action.RESTART
    t.started()
    clock.advance(30)
    assert t.decide("died").action is Action.RESTART
    t.started()
    assert t.restarts == 2
    clock.advance(31)  # the first restart is 61 s old now
    assert t.restarts == 1
    d = t.decide("died")
    assert (d.action, d.attempt) == (Action.RESTART, 2)
    t.started()
    clock.advance(1)
    assert t.decide("died").action is Action.GIVE_UP


def test_a_restart_that_dies_while_starting_never_counts_as_stable() -> None:
    t, clock = tracker(restart_limit=2, stable_start_time=10)
    assert t.decide("died").action is Action.RESTART
    t.started()
    clock.advance(30)  # a start that took 30 s and then failed
    assert t.decide("died", started=False).action is Action.RESTART
    t.started()
    clock.advance(30)
    assert t.decide("died", started=False).action is Action.GIVE_UP


def test_hangs_and_deaths_share_the_limit() -> None:
    t, clock = tracker(restart_limit=2, restart_on_hang=True)
    assert t.decide("hung").action is Action.RESTART
    t.started()
    clock.advance(1)
    assert t.decide("died").action is Action.RESTART
    t.started()
    clock.advance(1)
    assert t.decide("hung").action is Action.GIVE_UP


def test_zero_limit_gives_up_at_once_and_reset_forgets() -> None:
    t, _ = tracker(restart_limit=0)
    assert t.decide("died").action is Action.GIVE_UP
    t, clock = tracker(restart_limit=1)
    assert t.decide("died").action is Action.RESTART
    t.started()
    clock.advance(1)
    t.reset()  # a start the user asked for
    assert t.decide("died").action is Action.RESTART


def test_uptime_follows_the_clock() -> None:
    clock = Clock()
    t = RestartTracker(RestartPolicy(), clock=clock)
    assert t.uptime() is None
    t.started()
    clock.advance(2.5)
    assert t.uptime() == 2.5


def test_a_policy_change_applies_to_the_next_decision() -> None:
    t, _ = tracker(restart_on_death=False)
    assert t.decide("died").action is Action.IGNORE
    t.policy = t.policy.replace(restart_on_death=True)
    assert t.decide("died").action is Action.RESTART


@pytest.mark.parametrize(
    "kw",
    [{"restart_limit": -1}, {"window": 0}, {"window": -5}, {"stable_start_time": -1}],
)
def test_bad_values_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RestartPolicy(**kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RestartPolicy().replace(**kw)


def test_policy_is_frozen() -> None:
    p = RestartPolicy()
    with pytest.raises(AttributeError):
        p.restart_limit = 3  # type: ignore[misc]


def test_failure_detail_carries_the_reason() -> None:
    f = Failure("died", pid=42, exit_code=-9, stderr_tail="boom", uptime=1.5)
    d = f.detail()
    assert d["reason"] == "died" and d["signal"] == 9 and d["exit_code"] == -9
    assert d["stderr_tail"] == "boom" and d["uptime"] == 1.5 and d["pid"] == 42
    assert Failure("died", exit_code=3).signal is None
    h = Failure("hung", missed_heartbeats=4, detected_after=12.0).detail()
    assert h["reason"] == "hung" and h["missed_heartbeats"] == 4 and h["detected_after"] == 12.0

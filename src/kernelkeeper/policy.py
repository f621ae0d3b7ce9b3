"""When a kernel that died or hung is restarted: pure rules, no I/O.

:class:`RestartPolicy` is the configuration (frozen); :class:`RestartTracker`
is the small state one kernel's supervisor keeps with it: when the current
process started and when the recent automatic restarts happened. The
supervisor reports each failure (:meth:`RestartTracker.decide`) and does what
the answer says. Time comes from an injected clock, so the rules are tested
without kernels or sleeps.

The rules:

* a failure the policy does not restart for (``restart_on_death`` /
  ``restart_on_hang`` off) is left alone (:attr:`Action.IGNORE`);
* a kernel that ran at least ``stable_start_time`` seconds before failing had
  a stable run: the restarts before it are forgiven;
* one that fails sooner (including a restart that dies while starting)
  counts toward ``restart_limit``; restarts older than ``window`` seconds
  no longer count;
* past the limit the supervisor gives up (:attr:`Action.GIVE_UP`).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import time
from collections.abc import Callable
from typing import Any

from .errors import ConfigurationError

__all__ = ["Action", "Decision", "Failure", "RestartPolicy", "RestartTracker"]


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """What to restart automatically, and how often.

    :param restart_on_death: restart a kernel whose process exits on its own.
    :param restart_on_hang: restart (killing it first) a kernel whose heartbeat stopped.
    :param restart_limit: most automatic restarts within ``window`` seconds.
    :param window: seconds over which restarts count toward the limit.
    :param stable_start_time: a kernel that fails sooner than this after its
        start counts toward the limit; one that ran longer starts a fresh count.
    """

    restart_on_death: bool = False
    restart_on_hang: bool = False
    restart_limit: int = 5
    window: float = 300.0
    stable_start_time: float = 10.0

    def __post_init__(self) -> None:
        if self.restart_limit < 0:
            raise ConfigurationError(f"restart_limit={self.restart_limit}: must be >= 0")
        if not self.window > 0:
            raise ConfigurationError(f"window={self.window}: must be > 0 seconds")
        if not self.stable_start_time >= 0:
            raise ConfigurationError(
                f"stable_start_time={self.stable_start_time}: must be >= 0 seconds"
            )

    def replace(self, **changes: Any) -> RestartPolicy:
        """A copy with ``changes`` applied (checked again)."""
        return dataclasses.replace(self, **changes)


class Action(str, enum.Enum):
    """What the supervisor should do about a failure."""

    RESTART = "restart"
    GIVE_UP = "give_up"
    IGNORE = "ignore"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Decision:
    """The answer to one failure: ``attempt`` counts the restarts toward the limit,
    including this one; ``why`` says it in words (for logs and events)."""

    action: Action
    attempt: int
    limit: int
    why: str


@dataclasses.dataclass(frozen=True)
class Failure:
    """What went wrong with a kernel process, as the supervisor saw it.

    ``kind`` is ``died`` (the process exited on its own, or a restart died
    while starting) or ``hung`` (its heartbeat went silent). ``uptime`` is
    the seconds from the process's start to the failure, ``detected_after``
    the seconds from the failure (the last beat, for a hang) to its detection.
    """

    kind: str
    pid: int | None = None
    exit_code: int | None = None
    stderr_tail: str = ""
    missed_heartbeats: int = 0
    uptime: float | None = None
    detected_after: float = 0.0
    during_restart: bool = False

    @property
    def signal(self) -> int | None:
        """The signal that killed the process (from a negative exit code), else None."""
        code = self.exit_code
        return -code if code is not None and code < 0 else None

    def detail(self) -> dict[str, Any]:
        """The fields of a lifecycle event's ``detail`` (``reason`` is ``kind``)."""
        return {
            "reason": self.kind,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "stderr_tail": self.stderr_tail,
            "missed_heartbeats": self.missed_heartbeats,
            "uptime": self.uptime,
            "detected_after": self.detected_after,
            "during_restart": self.during_restart,
        }


class RestartTracker:
    """One kernel's restart history under a :class:`RestartPolicy`.

    :param clock: seconds, monotonic (``time.monotonic`` unless a test injects one).
    """

    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._started: float | None = None
        self._restarts: collections.deque[float] = collections.deque()

    def started(self) -> None:
        """A process of the kernel starts now (a first start or a restart attempt)."""
        self._started = self._clock()

    def uptime(self) -> float | None:
        """Seconds since :meth:`started`; None before the first start."""
        return None if self._started is None else self._clock() - self._started

    @property
    def restarts(self) -> int:
        """Automatic restarts that still count toward the limit."""
        self._expire(self._clock())
        return len(self._restarts)

    def reset(self) -> None:
        """Forget the history (a start or restart asked for by the user)."""
        self._restarts.clear()

    def _expire(self, now: float) -> None:
        while self._restarts and now - self._restarts[0] >= self.policy.window:
            self._restarts.popleft()

    def decide(self, kind: str, started: bool = True) -> Decision:
        """A ``died`` or ``hung`` failure happened now: restart, give up, or ignore it.

        ``started=False``: the process failed while it was being started (a
        restart that died at once), which never counts as a stable run.
        """
        p = self.policy
        wanted = p.restart_on_hang if kind == "hung" else p.restart_on_death
        if not wanted:
            return Decision(Action.IGNORE, 0, p.restart_limit, f"no automatic restart on {kind}")
        now = self._clock()
        up = self.uptime()
        if started and up is not None and up >= p.stable_start_time:
            self._restarts.clear()  # a stable run forgives the earlier restarts
        self._expire(now)
        if len(self._restarts) >= p.restart_limit:
            return Decision(
                Action.GIVE_UP,
                len(self._restarts),
                p.restart_limit,
                f"restart limit reached ({p.restart_limit} within {p.window:g} s)",
            )
        self._restarts.append(now)
        n = len(self._restarts)
        return Decision(Action.RESTART, n, p.restart_limit, f"restart {n} of {p.restart_limit}")

"""The states of a managed kernel and every transition between them, as one table.

:class:`~kernelkeeper.AsyncKernelManager` checks each change of its state
against :data:`TRANSITIONS`: a change that is not in the table is a bug in the
manager. It is logged as an error, and raised as :class:`LifecycleError`
when :data:`strict` is true (the test suite turns it on; so does the
environment variable ``KERNELKEEPER_STRICT_STATES=1``). Pure data, no I/O.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["TRANSITIONS", "KernelState", "Transition", "allowed", "causes", "strict"]


class KernelState(str, enum.Enum):
    """Where a managed kernel is in its life."""

    NOT_STARTED = "not_started"
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RESTARTING = "restarting"
    SHUTTING_DOWN = "shutting_down"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


class Transition(NamedTuple):
    """One allowed change of state: ``source`` becomes ``target`` on ``event``."""

    source: KernelState
    event: str
    target: KernelState


S = KernelState

#: Every allowed transition. The events:
#:
#: ``start``      start_kernel() launches a process (also after a shutdown, a death,
#:                or shutdown_kernel(restart=True)).
#: ``launched``   the new process of a restart is up (it still has to become ready).
#: ``launch_failed`` the process could not be started or died before it bound its ports.
#: ``busy``/``idle`` the kernel's iopub status, seen by a client made by client().
#: ``ready``      wait_ready() got its kernel_info reply.
#: ``died``       the process exited without being asked to.
#: ``shutdown``   request_shutdown() or shutdown_kernel(); also aborts a start in progress.
#: ``stopped``    the process is gone and its resources released (a ``shutdown`` event).
#: ``restart``    restart_kernel(), shutdown_kernel(restart=True),
#:                request_shutdown(restart=True), or an automatic restart.
TRANSITIONS: tuple[Transition, ...] = (
    Transition(S.NOT_STARTED, "start", S.STARTING),
    Transition(S.DEAD, "start", S.STARTING),
    Transition(S.RESTARTING, "start", S.STARTING),
    Transition(S.RESTARTING, "launched", S.STARTING),
    Transition(S.STARTING, "launch_failed", S.DEAD),
    Transition(S.RESTARTING, "launch_failed", S.DEAD),
    Transition(S.STARTING, "busy", S.BUSY),
    Transition(S.IDLE, "busy", S.BUSY),
    Transition(S.STARTING, "idle", S.IDLE),
    Transition(S.BUSY, "idle", S.IDLE),
    Transition(S.STARTING, "ready", S.IDLE),
    Transition(S.STARTING, "died", S.DEAD),
    Transition(S.IDLE, "died", S.DEAD),
    Transition(S.BUSY, "died", S.DEAD),
    Transition(S.STARTING, "shutdown", S.SHUTTING_DOWN),
    Transition(S.IDLE, "shutdown", S.SHUTTING_DOWN),
    Transition(S.BUSY, "shutdown", S.SHUTTING_DOWN),
    Transition(S.RESTARTING, "shutdown", S.SHUTTING_DOWN),
    Transition(S.DEAD, "shutdown", S.SHUTTING_DOWN),
    Transition(S.SHUTTING_DOWN, "stopped", S.DEAD),
    Transition(S.STARTING, "restart", S.RESTARTING),
    Transition(S.IDLE, "restart", S.RESTARTING),
    Transition(S.BUSY, "restart", S.RESTARTING),
    Transition(S.SHUTTING_DOWN, "restart", S.RESTARTING),
    Transition(S.DEAD, "restart", S.RESTARTING),
)

_BY_EDGE: Mapping[tuple[KernelState, KernelState], frozenset[str]] = {
    (t.source, t.target): frozenset(
        u.event for u in TRANSITIONS if (u.source, u.target) == (t.source, t.target)
    )
    for t in TRANSITIONS
}

#: Raise :class:`LifecycleError` on a transition not in the table (else only log it).
strict: bool = os.environ.get("KERNELKEEPER_STRICT_STATES", "").strip() not in ("", "0")


def causes(source: KernelState, target: KernelState) -> frozenset[str]:
    """The events that may take a kernel from ``source`` to ``target``."""
    return _BY_EDGE.get((source, target), frozenset())


def allowed(source: KernelState, event: str, target: KernelState) -> bool:
    """Is ``source`` → ``target`` on ``event`` in the table?"""
    return event in causes(source, target)

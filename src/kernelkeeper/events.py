"""Lifecycle events and the checked state of one managed kernel.

:class:`KernelEvents` is the part of :class:`~kernelkeeper.AsyncKernelManager`
that keeps the kernel's state (every change checked against
:data:`kernelkeeper.states.TRANSITIONS`) and tells listeners about it. The
listeners never run on the event loop: :mod:`kernelkeeper.callbacks` calls
them on library threads, in order per kernel.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import states as _states
from .callbacks import delivering, dispatcher
from .errors import LifecycleError
from .session import Message
from .states import KernelState
from .subproc import KernelManager as ProcessManager

__all__ = ["KernelEvent", "KernelEvents"]

log = logging.getLogger("kernelkeeper.manager")

# Session ids of processes since replaced, kept to ignore their late statuses.
_OLD_SESSIONS_KEPT = 8

# How long a lifecycle call waits for slow listeners to see its events before
# it returns anyway (they still get them).
_LISTENER_WAIT = 10.0

S = KernelState


@dataclasses.dataclass(frozen=True)
class KernelEvent:
    """A lifecycle event: ``kind`` is one of started, state, restarting,
    restarted, died, shutdown.

    ``state`` is the kernel's state when the event happened. A ``state``
    event's detail has ``previous`` (the state before) and ``cause`` (the
    event of :data:`kernelkeeper.states.TRANSITIONS` that made the change).
    """

    kind: str
    kernel_id: str
    state: KernelState
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    time: float = dataclasses.field(default_factory=time.time)


class KernelEvents:
    """Listeners and state of one kernel; a base of the lifecycle manager."""

    kernel_id: str
    _loop: asyncio.AbstractEventLoop | None
    _proc: ProcessManager | None

    def __init__(self) -> None:
        self._state = KernelState.NOT_STARTED
        self._listeners: list[Callable[[KernelEvent], Any]] = []
        self._delivery_key = object()  # orders this kernel's callbacks in the dispatcher
        # The session id the running process signs its messages with, once
        # known, with that process; the ids of processes since replaced; and
        # the id on the status that made the state busy (see _on_status).
        self._session: tuple[ProcessManager, str] | None = None
        self._old_sessions: collections.deque[str] = collections.deque(maxlen=_OLD_SESSIONS_KEPT)
        self._busy_session = ""

    @property
    def state(self) -> KernelState:
        """Where the kernel is in its life (see :mod:`kernelkeeper.states`)."""
        return self._state

    def add_event_listener(self, callback: Callable[[KernelEvent], Any]) -> None:
        """Call ``callback(event)`` on every lifecycle event and state change.

        Listeners do not run on the event loop: they are called on a library
        thread, one event after the other in order for this kernel, so a slow
        listener delays only this kernel's later events. A coroutine it returns
        runs on the manager's loop (and is awaited before the next event). Exceptions
        are logged. The lifecycle calls (start, restart, shutdown, wait_ready, ...)
        return once the listeners have seen their events (waiting at most 10 s
        for slow ones).
        """
        self._listeners.append(callback)

    def remove_event_listener(self, callback: Callable[[KernelEvent], Any]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def _emit(self, kind: str, **detail: Any) -> None:
        if not self._listeners:
            return
        event = KernelEvent(kind, self.kernel_id, self._state, detail)
        for cb in list(self._listeners):
            self._deliver(cb, event)

    def _deliver(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` off the loop, after this kernel's earlier callbacks."""
        loop = self._loop if self._loop is not None and not self._loop.is_closed() else None
        dispatcher().submit(self._delivery_key, fn, *args, loop=loop)

    async def _delivered(self) -> None:
        """Wait (a bounded time) until the listeners have seen the events so far."""
        if delivering() is self._delivery_key:
            return  # called from one of our own callbacks: it would wait for itself
        fut = dispatcher().barrier(self._delivery_key)
        if fut.done():
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(fut), _LISTENER_WAIT)
        except asyncio.TimeoutError:
            log.warning(
                "Listeners of kernel %s are slow (> %s s); not waiting for them",
                self.kernel_id,
                _LISTENER_WAIT,
            )

    def _set_state(self, state: KernelState, cause: str, **detail: Any) -> None:
        """Change state on ``cause``, an event of the transition table."""
        old = self._state
        if state is old:
            return
        if not _states.allowed(old, cause, state):
            msg = f"{self!r}: {old} -> {state} on {cause!r} is not in the transition table"
            log.error(msg)
            if _states.strict:
                raise LifecycleError(msg)
        self._state = state
        self._emit("state", previous=old.value, cause=cause, **detail)

    def _on_status(self, msg: Message) -> None:
        """An iopub status seen by a client made by ``client()``: busy or idle.

        Two kinds do not move the state. The statuses of a kernel_info
        request (the probes of ``wait_for_ready``, or a ``kernel_info()``
        call) are no work of the kernel's, and a probing client may close
        before the idle arrives; a probe's idle only tells a kernel still
        ``starting`` that it is up. And statuses signed by the session of a
        process since replaced (still queued in a client's socket after a
        restart) are ignored: every kernel process signs with a session id of
        its own, which the manager learns from its first answer to a probe.
        """
        if self._state not in (S.STARTING, S.IDLE, S.BUSY):
            return
        state = msg["content"].get("execution_state")
        session = msg["header"].get("session") or ""
        current = self._current_session()
        if msg["parent_header"].get("msg_type") == "kernel_info_request":
            if state == "idle":
                self._probe_answered(session, current)
            return
        if session and session in self._old_sessions:
            return
        if state == "busy":
            self._busy_session = session
            self._set_state(S.BUSY, "busy")
        elif state == "idle":
            self._set_state(S.IDLE, "idle")

    def _on_ready_reply(self, reply: Message) -> None:
        """The kernel_info reply that ended a client's ``wait_for_ready``.

        Says what the probe's idle says, but cannot be lost: that idle is
        dropped when the kernel publishes it before the client's new
        subscription reaches it (right after a restart, say)."""
        if self._state in (S.STARTING, S.IDLE, S.BUSY):
            session = reply["header"].get("session") or ""
            current = self._current_session()  # retires a replaced process's session
            if not (session and session in self._old_sessions):
                self._probe_answered(session, current)

    def _probe_answered(self, session: str, current: str) -> None:
        # A probe's answer tells a kernel still starting that it is up, and
        # names the running process's session when that is not known yet.
        if self._state is S.STARTING or not current:
            self._learn_session(session)
            if self._state is S.STARTING:
                self._set_state(S.IDLE, "idle")

    def _current_session(self) -> str:
        """The session id of the running process ('' while it is not known)."""
        known = self._session
        if known is None:
            return ""
        proc, session = known
        if proc is self._proc:
            return session
        # Its process was replaced (or is gone): what it still says is stale.
        self._session = None
        if session not in self._old_sessions:
            self._old_sessions.append(session)
        return ""

    def _learn_session(self, session: str) -> None:
        """The running process answered a probe signed with ``session``."""
        proc = self._proc
        if not session or proc is None:
            return
        self._current_session()  # retires the session of a replaced process
        self._session = (proc, session)
        # Seen on the running process: a kernel that reuses its session id
        # across restarts must not have its statuses ignored.
        with contextlib.suppress(ValueError):
            self._old_sessions.remove(session)
        if self._state is S.BUSY and self._busy_session != session:
            # That busy was the word of a process since replaced.
            self._set_state(S.IDLE, "idle")

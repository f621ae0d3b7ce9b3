"""Lifecycle events and the checked state of one managed kernel.

:class:`KernelEvents` is the part of :class:`~kernelkeeper.AsyncKernelManager`
that keeps the kernel's state (every change checked against
:data:`kernelkeeper.states.TRANSITIONS`) and tells listeners about it. The
listeners never run on the event loop: :mod:`kernelkeeper.callbacks` calls
them on library threads, in order per kernel.
"""

from __future__ import annotations

import asyncio
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

__all__ = ["KernelEvent", "KernelEvents"]

log = logging.getLogger("kernelkeeper.manager")

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

    def __init__(self) -> None:
        self._state = KernelState.NOT_STARTED
        self._listeners: list[Callable[[KernelEvent], Any]] = []
        self._delivery_key = object()  # orders this kernel's callbacks in the dispatcher

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
        # Clients made by client() report the kernel's busy/idle to us.
        if self._state in (S.STARTING, S.IDLE, S.BUSY):
            s = msg["content"].get("execution_state")
            if s == "busy":
                self._set_state(S.BUSY, "busy")
            elif s == "idle":
                self._set_state(S.IDLE, "idle")

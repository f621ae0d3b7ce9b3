"""Per-request subscriptions by msg_id, and the one place pending waits fail.

A request that wants its reply registers a future under its msg_id; an
execution being collected also registers a listener for its iopub and
stdin messages and a future for its end (the idle status). When the kernel
dies or the channels close, :meth:`Router.fail_all` fails every one of them
at once, so no caller waits for a reply that cannot come.

Everything here runs on the client's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .session import Message

__all__ = ["Listener", "Router"]

Listener = Callable[[Message], None]


class Router:
    """Routes messages to whoever waits on their parent's msg_id."""

    def __init__(self) -> None:
        self.replies: dict[str, asyncio.Future[Message]] = {}
        self.listeners: dict[str, Listener] = {}
        self._ends: dict[str, asyncio.Future[Any]] = {}

    def expect_reply(self, msg_id: str) -> asyncio.Future[Message]:
        """A future for the shell/control reply to ``msg_id``."""
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.replies[msg_id] = fut
        return fut

    def listen(
        self, msg_id: str, listener: Listener, end: asyncio.Future[Any] | None = None
    ) -> None:
        """Send iopub/stdin messages of ``msg_id`` to ``listener``.

        ``end`` (optional) is a future the listener resolves itself; it is
        failed with the others by :meth:`fail_all`.
        """
        self.listeners[msg_id] = listener
        if end is not None:
            self._ends[msg_id] = end

    def forget(self, msg_id: str) -> None:
        """Drop everything registered for ``msg_id``."""
        self.replies.pop(msg_id, None)
        self.listeners.pop(msg_id, None)
        self._ends.pop(msg_id, None)

    def route(self, channel: str, msg: Message) -> bool:
        """Hand ``msg`` to its waiter; False when nobody waits for it."""
        parent = msg["parent_header"].get("msg_id")
        if parent is None:
            return False
        if channel in ("shell", "control"):
            fut = self.replies.pop(parent, None)
            if fut is None:
                return False
            if not fut.done():
                fut.set_result(msg)
            return True
        listener = self.listeners.get(parent)
        if listener is None:
            return False
        listener(msg)
        return True

    def fail_all(self, make_error: Callable[[], BaseException]) -> int:
        """Fail every pending reply future and execution end with a fresh error.

        Returns how many waits were failed. Listeners stay until their owners
        drop them (they run ``finally`` blocks as the errors reach them).
        """
        pending = [*self.replies.values(), *self._ends.values()]
        self.replies.clear()
        self._ends.clear()
        failed = 0
        for fut in pending:
            if not fut.done():
                fut.set_exception(make_error())
                # A request whose reply coroutine is never awaited must not log
                # "exception was never retrieved"; awaiters still get the error.
                fut.exception()
                failed += 1
        return failed

"""Per-request subscriptions by msg_id, and the one place pending waits fail.

Whoever sends a request and wants something back subscribes to its msg_id:
the shell/control reply (a future, or a :class:`ReplySink` a waiting thread
holds: the blocking face's one-crossing requests), the iopub and stdin messages it causes
(a listener), the end of an execution (a future the listener resolves).
Everything no subscription claims goes to the channel's queue, where
jupyter_client-style code reads it with ``get_msg``.

A *muted* subscription belongs to the library's own probes (the ready
handshake's kernel_info): their busy/idle statuses are not user output, so
they are swallowed, also after the subscription is closed, until the probe's
idle status has gone by. When the kernel dies or the channels close,
:meth:`Router.fail_all` fails every pending wait at once, so no caller waits
for a reply that cannot come.

Everything here runs on the client's event loop.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Protocol

from .errors import KernelTimeoutError
from .session import Message

__all__ = ["Listener", "ReplySink", "Router", "Subscription"]

Listener = Callable[[Message], None]


class ReplySink(Protocol):
    """Takes one reply or one error (the first call wins), on the loop."""

    def set_result(self, msg: Message) -> None: ...

    def set_exception(self, error: BaseException) -> None: ...


def _expire(fut: asyncio.Future[Message], msg_id: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(KernelTimeoutError(f"No reply to {msg_id} within {timeout} s"))


def _is_idle(msg: Message) -> bool:
    return bool(msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle")


class Subscription:
    """What one request waits for; close it (or use ``with``) when done."""

    def __init__(
        self,
        router: Router,
        msg_id: str,
        *,
        reply: bool,
        listener: Listener | None,
        end: asyncio.Future[Any] | None,
        mute: bool,
        sink: ReplySink | None = None,
    ) -> None:
        self.router = router
        self.msg_id = msg_id
        self.reply: asyncio.Future[Message] | None = (
            asyncio.get_running_loop().create_future() if reply and sink is None else None
        )
        #: Gets the reply instead of ``reply`` (then the subscription closes itself).
        self.sink = sink
        self.listener = listener
        self.end = end
        self.mute = mute
        #: A muted probe's idle status went by: nothing more of it will come.
        self.idle_seen = False
        # Counted by the router while open (set by ``Router.subscribe``).
        self.awaits = False
        self.listens = False

    def __repr__(self) -> str:
        return f"<Subscription {self.msg_id}>"

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop routing to this subscription (a muted one keeps swallowing statuses)."""
        self.router._close(self)

    async def wait_reply(self, timeout: float | None) -> Message:
        """The reply; :class:`KernelTimeoutError` after ``timeout`` seconds."""
        fut = self.reply
        assert fut is not None, "subscribed without reply=True"
        if timeout is None or fut.done():
            return await fut
        # A timer that fails the future, rather than wait_for and shield: the
        # future is this wait's alone, and this is on every request's path.
        timer = asyncio.get_running_loop().call_later(
            max(0.0, timeout), _expire, fut, self.msg_id, timeout
        )
        try:
            return await fut
        finally:
            timer.cancel()


class Router:
    """Routes messages to the subscription of their parent's msg_id."""

    #: Most closed probes whose idle status is still swallowed (oldest forgotten first).
    max_muted = 64

    def __init__(self) -> None:
        self._subs: dict[str, Subscription] = {}
        self._muted: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: Open subscriptions that await a reply (a future or a sink).
        self.awaiting = 0
        #: Open subscriptions that take iopub/stdin messages (a listener, or muted).
        self.listening = 0

    @property
    def replies(self) -> dict[str, asyncio.Future[Message] | ReplySink]:
        """The replies still pending, by msg_id (a snapshot): futures, and the
        sinks of blocking callers."""
        out: dict[str, asyncio.Future[Message] | ReplySink] = {}
        for k, s in self._subs.items():
            if s.sink is not None:
                out[k] = s.sink
            elif s.reply is not None and not s.reply.done():
                out[k] = s.reply
        return out

    def subscribe(
        self,
        msg_id: str,
        *,
        reply: bool = True,
        listener: Listener | None = None,
        end: asyncio.Future[Any] | None = None,
        mute: bool = False,
        sink: ReplySink | None = None,
    ) -> Subscription:
        """Subscribe to what ``msg_id`` causes (call before sending it).

        ``end`` (optional) is a future the listener resolves itself; it is
        failed with the reply by :meth:`fail_all`. A ``sink`` takes the reply
        (or the failure) in place of a future, and the subscription closes
        when it has it.
        """
        sub = Subscription(
            self, msg_id, reply=reply, listener=listener, end=end, mute=mute, sink=sink
        )
        old = self._subs.get(msg_id)
        if old is not None:  # replaced: no longer counted
            self.awaiting -= old.awaits
            self.listening -= old.listens
        self._subs[msg_id] = sub
        sub.awaits = reply or sink is not None
        sub.listens = listener is not None or mute
        self.awaiting += sub.awaits
        self.listening += sub.listens
        return sub

    def withdraw(self, msg_id: str, sink: ReplySink) -> None:
        """Close ``msg_id``'s subscription if ``sink`` still waits on it (its
        caller gave up: a timeout, Ctrl-C)."""
        sub = self._subs.get(msg_id)
        if sub is not None and sub.sink is sink:
            sub.sink = None
            self._close(sub)

    def _close(self, sub: Subscription) -> None:
        if self._subs.get(sub.msg_id) is sub:
            del self._subs[sub.msg_id]
            self.awaiting -= sub.awaits
            self.listening -= sub.listens
        if sub.mute and not sub.idle_seen:
            # Its statuses may still be in flight: keep them out of the queue.
            self._muted[sub.msg_id] = None
            while len(self._muted) > self.max_muted:
                self._muted.popitem(last=False)

    def route(self, channel: str, msg: Message) -> bool:
        """Hand ``msg`` to its subscriber; False when nobody claims it."""
        parent = msg["parent_header"].get("msg_id")
        if parent is None:
            return False
        sub = self._subs.get(parent)
        if channel in ("shell", "control"):
            if sub is None:
                return False
            if sub.sink is not None:
                sink, sub.sink = sub.sink, None
                self._close(sub)
                sink.set_result(msg)
                return True
            if sub.reply is None:
                return False
            if not sub.reply.done():
                sub.reply.set_result(msg)
            return True
        if sub is not None:
            if sub.listener is not None:
                sub.listener(msg)
                return True
            if sub.mute:
                sub.idle_seen = sub.idle_seen or _is_idle(msg)
                return True
            return False
        if parent in self._muted:
            if _is_idle(msg):
                del self._muted[parent]
            return True
        return False

    def fail_all(self, make_error: Callable[[], BaseException]) -> int:
        """Fail every pending reply and execution end with a fresh error.

        Returns how many waits were failed. Subscriptions stay until their
        owners close them (they run ``finally`` blocks as the errors reach them).
        """
        self._muted.clear()  # a dead kernel or closed channels: no more statuses
        pending = [f for s in self._subs.values() for f in (s.reply, s.end) if f is not None]
        failed = 0
        for sub in [s for s in self._subs.values() if s.sink is not None]:
            sink, sub.sink = sub.sink, None
            self._close(sub)
            assert sink is not None
            sink.set_exception(make_error())
            failed += 1
        for fut in pending:
            if not fut.done():
                fut.set_exception(make_error())
                # A request whose reply coroutine is never awaited must not log
                # "exception was never retrieved"; awaiters still get the error.
                fut.exception()
                failed += 1
        return failed

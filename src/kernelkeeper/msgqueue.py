"""A FIFO of received messages with their wire sizes, and the ``get_msg`` side
of a channel that reads it.

Each channel of the client keeps one (see :mod:`kernelkeeper.channels`).
Everything here runs on the client's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
from collections.abc import Callable
from typing import Protocol

from .errors import KernelDiedError
from .session import Message

__all__ = ["MessageQueue", "QueuedReader"]

log = logging.getLogger("kernelkeeper.channels")


class MessageQueue:
    """A FIFO of messages with their wire sizes; ``get`` waits, the rest does not.

    The subset of :class:`asyncio.Queue` that callers use (``empty``,
    ``qsize``, ``get_nowait`` raising :class:`asyncio.QueueEmpty`, ``get``),
    plus ``nbytes``: the summed frame sizes of what is queued. A ``get``
    cancelled after it was woken passes the wake-up on, so a message is never
    lost to a timeout.
    """

    def __init__(self) -> None:
        self._items: collections.deque[tuple[Message, int]] = collections.deque()
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()
        #: Summed frame sizes of the queued messages.
        self.nbytes = 0

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put(self, msg: Message, nbytes: int = 0) -> None:
        self._items.append((msg, nbytes))
        self.nbytes += nbytes
        self._wake_next()

    def popleft(self) -> tuple[Message, int]:
        """Remove and return the oldest ``(message, nbytes)``; IndexError when empty."""
        msg, n = self._items.popleft()
        self.nbytes -= n
        return msg, n

    def peek_last(self) -> Message | None:
        """The newest queued message, left in place."""
        return self._items[-1][0] if self._items else None

    def get_nowait(self) -> Message:
        if not self._items:
            raise asyncio.QueueEmpty
        return self.popleft()[0]

    async def get(self) -> Message:
        while not self._items:
            fut = asyncio.get_running_loop().create_future()
            self._getters.append(fut)
            try:
                await fut
            except BaseException:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(fut)
                if not fut.cancelled():  # woken, then cancelled: wake the next getter
                    self._wake_next()
                raise
        return self.popleft()[0]

    @property
    def waiting(self) -> bool:
        """Is a ``get`` waiting?"""
        return bool(self._getters)

    def fail_waiters(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every waiting ``get`` (nothing will come); queued messages stay."""
        getters, self._getters = self._getters, collections.deque()
        for fut in getters:
            if not fut.done():
                fut.set_exception(make_error())
                fut.exception()  # retrieved: a getter cancelled meanwhile must not log it

    def _wake_next(self) -> None:
        while self._getters and self._items:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)
                return


class _Link(Protocol):
    def check_alive(self) -> None: ...


class QueuedReader:
    """The ``get_msg`` side of a channel: its queue of messages nobody else
    claimed, bounded, and jupyter_client's ways of reading it (a part of
    :class:`~kernelkeeper.channels.Channel`)."""

    name: str
    queue: MessageQueue
    link: _Link
    max_queued: int
    max_queued_bytes: int
    overflowed: int
    overflowed_bytes: int

    def ensure_started(self) -> None:
        raise NotImplementedError

    def put(self, msg: Message, nbytes: int = 0) -> None:
        """Queue a message for ``get_msg``; past ``max_queued`` messages or
        ``max_queued_bytes`` bytes the oldest are dropped (and counted).

        An unread queue must not grow without bound in a long-lived client
        (jupyter_client's sockets drop at their 1000-message high-water mark;
        bytes matter too: a cell printing gigabytes must not fill our memory).
        The newest message is always kept, however large.
        """
        q = self.queue
        q.put(msg, nbytes)
        while q.qsize() > 1 and (q.qsize() > self.max_queued or q.nbytes > self.max_queued_bytes):
            _, n = q.popleft()
            self.overflowed += 1
            self.overflowed_bytes += n
            if self.overflowed == 1:
                log.warning(
                    "%s queue full (%d unread messages, %d bytes); dropping the oldest",
                    self.name,
                    q.qsize(),
                    q.nbytes,
                )

    async def get_msg(self, timeout: float | None = None, *, block: bool = True) -> Message:
        """The next queued message; :class:`queue.Empty` after ``timeout`` seconds.

        A message already queued is returned even with ``timeout=0`` (or
        ``block=False``, which is the same). A channel never started is started
        first, as jupyter_client's are on first use. When the
        kernel is known to be dead and nothing is queued, nothing more will
        come, so this does not wait: with a ``timeout`` it raises
        :class:`queue.Empty` at once (the jupyter_client idiom then asks
        ``is_alive()``, and nbclient raises its DeadKernelError), without one
        :class:`~kernelkeeper.errors.KernelDiedError`. A wait under way when
        the kernel dies ends the same way; one under way when the channels
        close raises :class:`~kernelkeeper.errors.NotRunningError`.
        """
        q = self.queue
        if not block:
            timeout = 0
        if not q.empty():
            return q.get_nowait()
        try:
            self.link.check_alive()
            self.ensure_started()
            if timeout is None:
                return await q.get()
            if timeout <= 0:
                raise queue.Empty
            return await asyncio.wait_for(q.get(), timeout)
        except asyncio.TimeoutError:
            raise queue.Empty from None
        except KernelDiedError:
            if timeout is None:
                raise
            raise queue.Empty from None

    async def get_msgs(self) -> list[Message]:
        """All queued messages, without waiting."""
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out

    async def msg_ready(self) -> bool:
        """Is a message queued?"""
        return not self.queue.empty()

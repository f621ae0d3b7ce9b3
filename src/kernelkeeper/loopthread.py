"""The event-loop thread (the portal) the blocking face runs the async core on.

By default one loop thread per process, started on first use; a test or an
embedding application may pass its own :class:`LoopThread` to the blocking
classes instead (``portal=``), also one wrapping a loop it already runs
(:meth:`LoopThread.attach`). A portal knows the pid it was made in. After a fork the child
gets a fresh one of its own on first use (threads do not survive a fork,
and the parent's loop object must never be driven from the child); objects
made before the fork belong to the parent's loop and refuse to work in the
child with a clear :class:`~kernelkeeper.errors.KernelError` instead of
hanging.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import KernelError, KernelTimeoutError, LifecycleError

__all__ = ["Handoff", "LoopThread", "portal"]

T = TypeVar("T")


class Handoff:
    """One result (or error) handed from the loop to one waiting thread.

    What a blocking round trip needs of a ``concurrent.futures.Future`` and no
    more: a bare lock the loop releases, no condition, no callbacks, no loop
    hop. Set on the loop only (the first value wins); waited for in one
    other thread.
    """

    __slots__ = ("_done", "_error", "_lock", "_value", "label")

    def __init__(self, label: str = "") -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        #: What is awaited (for error messages), set by whoever fills it.
        self.label = label

    def set_result(self, value: Any) -> None:
        if not self._done:
            self._done = True
            self._value = value
            self._lock.release()

    def set_exception(self, error: BaseException) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set (True) or ``timeout`` seconds pass (False)."""
        return self._lock.acquire(True, -1 if timeout is None else max(0.0, timeout))

    def result(self) -> Any:
        """The value, or raise the error (once :meth:`wait` returned True)."""
        if self._error is not None:
            raise self._error
        return self._value


class LoopThread:
    """An asyncio event loop running forever on a daemon thread."""

    def __init__(self, name: str = "kernelkeeper-loop") -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._owned = True
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), name=name, daemon=True)
        self.thread.start()
        ready.wait()

    @classmethod
    def attach(cls, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> LoopThread:
        """A portal onto ``loop``, which the caller runs forever on ``thread``
        (and keeps running while blocking objects use it)."""
        self = cls.__new__(cls)
        self.pid = os.getpid()
        self.loop = loop
        self.thread = thread
        self._owned = False
        return self

    def __repr__(self) -> str:
        return f"<LoopThread {self.thread.name} pid={self.pid}>"

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def on_loop_thread(self) -> bool:
        """Is the caller the loop's own thread?"""
        return threading.current_thread() is self.thread

    def close(self, timeout: float = 10) -> None:
        """Stop the loop and join its thread (a portal this object started only)."""
        if not self._owned or not self.thread.is_alive() or os.getpid() != self.pid:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)

    def _check_caller(self) -> None:
        if os.getpid() != self.pid:
            raise KernelError(
                f"This kernelkeeper object was created in process {self.pid}, before a fork; "
                "its event loop does not exist in this process. Create new managers and "
                "clients in the child (the kernel itself belongs to the parent)."
            )
        if threading.current_thread() is self.thread:
            raise LifecycleError(
                "A blocking kernelkeeper call was made from the library's own event-loop "
                "thread (e.g. inside a callback); use the async API there"
            )
        if not self.thread.is_alive() or self.loop.is_closed():
            # Nothing would ever run the work: fail instead of waiting forever.
            raise KernelError(f"The event-loop thread {self.thread.name!r} has stopped")

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Have the loop call ``fn(*args)`` soon (a plain call: no task, no future)."""
        self._check_caller()
        self.loop.call_soon_threadsafe(fn, *args)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; a future for its result."""
        try:
            self._check_caller()
        except BaseException:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block until it finishes."""
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.done():
                # The coroutine itself raised a TimeoutError (e.g. KernelTimeoutError;
                # concurrent.futures.TimeoutError is TimeoutError since 3.11).
                return fut.result()
            fut.cancel()
            raise KernelTimeoutError(f"Operation did not finish within {timeout} s") from None
        except BaseException:
            # e.g. KeyboardInterrupt in the caller: do not leave the work running.
            fut.cancel()
            raise

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a plain function on the loop thread (for loop-bound objects)."""
        if self.on_loop_thread():
            # Already on the loop (e.g. a stdin hook calling kc.input()): call it directly.
            return fn(*args, **kwargs)

        async def wrapper() -> T:
            return fn(*args, **kwargs)

        return self.run(wrapper())


_portal: LoopThread | None = None
_portal_lock = threading.Lock()


def portal() -> LoopThread:
    """The library's loop thread, started on first use (and again after a fork)."""
    global _portal
    with _portal_lock:
        if _portal is None or _portal.pid != os.getpid() or not _portal.thread.is_alive():
            _portal = LoopThread()
        return _portal


def current() -> LoopThread | None:
    """The loop thread of this process, if one was started."""
    p = _portal
    return p if p is not None and p.pid == os.getpid() and p.thread.is_alive() else None


def _after_fork_in_child() -> None:
    global _portal, _portal_lock
    _portal = None  # threads do not survive fork
    # Another thread may have held the lock at the moment of the fork; in the
    # child nobody would ever release it.
    _portal_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

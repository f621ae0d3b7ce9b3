"""Delivery of user callbacks (event listeners, restart callbacks) off the event loop.

A listener is user code: it may be slow or block. Run on the event loop, a
slow one would stall every kernel on that loop (with the blocking API, every
kernel of the process). So callbacks are handed to :class:`Dispatcher`, a
small set of daemon threads owned by the library, started on demand: the
callbacks of one key (one kernel) run one after the other in the order they
were submitted, the callbacks of different keys in parallel. A callback that
returns a coroutine has it run on the event loop it came from, and the next
callback of that key waits for it (so the order holds for coroutines too).

A callback that calls back into its own manager (a listener that restarts
the kernel) must not wait for its own delivery: :func:`delivering` says
whose callback the current code runs in. The context variable travels with
``run_coroutine_threadsafe`` into the loop, which is what the blocking face
uses.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Dispatcher", "delivering", "dispatcher"]

log = logging.getLogger("kernelkeeper.callbacks")

_current_key: contextvars.ContextVar[Hashable | None] = contextvars.ContextVar(
    "kernelkeeper_delivering", default=None
)


def delivering() -> Hashable | None:
    """The key whose callback the calling code runs in, or None."""
    return _current_key.get()


def _wait(fut: concurrent.futures.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
    """Wait for a coroutine callback: the next callback of its key must come after it.

    A loop closed before it ran the coroutine would leave the future pending for ever.
    """
    while True:
        try:
            fut.result(timeout=0.5)
            return
        except concurrent.futures.CancelledError:
            return  # its loop was shut down (asyncio.run cancels what is left)
        except concurrent.futures.TimeoutError:
            if fut.done():
                raise  # the coroutine's own TimeoutError
            if loop.is_closed():
                fut.cancel()
                return


class Dispatcher:
    """Runs callbacks on library threads: in order per key, keys in parallel.

    :param max_workers: threads at most; past that, keys wait for a free thread.
    :param idle_exit: seconds a thread waits for work before it ends (a new one
        is started on demand), so an idle manager holds no callback threads.
    :param name: the threads' name.
    """

    def __init__(
        self, max_workers: int = 8, idle_exit: float = 5.0, name: str = "kk-callbacks"
    ) -> None:
        self.max_workers = max_workers
        self.idle_exit = idle_exit
        self.name = name
        self._lock = threading.Lock()
        self._pending: dict[Hashable, collections.deque[Callable[[], Any]]] = {}
        self._ready: collections.deque[Hashable] = collections.deque()
        self._wake = threading.Condition(self._lock)
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        *args: Any,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Call ``fn(*args)`` on a library thread after the earlier callbacks of ``key``.

        If it returns a coroutine, that runs on ``loop`` (when given and still open).
        """

        def call() -> None:
            token = _current_key.set(key)
            try:
                result = fn(*args)
                if asyncio.iscoroutine(result):
                    if loop is None or loop.is_closed():
                        result.close()
                        log.warning("Callback %r returned a coroutine with no loop to run it", fn)
                    else:
                        _wait(asyncio.run_coroutine_threadsafe(result, loop), loop)
            except Exception:
                log.exception("Callback %r failed", fn)
            finally:
                _current_key.reset(token)

        self._put(key, call)

    def barrier(self, key: Hashable) -> concurrent.futures.Future[None]:
        """A future done once every callback submitted for ``key`` so far has run."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if key not in self._pending:
                fut.set_result(None)
                return fut

        def mark() -> None:
            if fut.set_running_or_notify_cancel():
                fut.set_result(None)

        self._put(key, mark)
        return fut

    def _put(self, key: Hashable, job: Callable[[], Any]) -> None:
        with self._lock:
            queue = self._pending.get(key)
            if queue is not None:
                queue.append(job)  # a worker owns this key and will get to it
                return
            self._pending[key] = collections.deque([job])
            self._ready.append(key)
            self._workers = [t for t in self._workers if t.is_alive()]
            if self._idle == 0 and len(self._workers) < self.max_workers and not self._closed:
                t = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._workers.append(t)
                t.start()
            self._wake.notify()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
                while not self._ready and not self._closed:
                    if not self._wake.wait(self.idle_exit) and not self._ready:
                        # Idle for long: end. Under the lock, so _put sees one idle
                        # thread less and starts a new one if work comes.
                        self._idle -= 1
                        with contextlib.suppress(ValueError):
                            self._workers.remove(threading.current_thread())
                        return
                self._idle -= 1
                if not self._ready:
                    return  # closed and nothing left
                key = self._ready.popleft()
            while True:
                with self._lock:
                    queue = self._pending[key]
                    if not queue:
                        del self._pending[key]
                        break
                    job = queue.popleft()
                job()

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what is queued (waiting at most ``timeout`` s), then stop the threads.

        Threads stuck in a callback are daemons and are left behind.
        """
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            workers = list(self._workers)
        deadline = time.monotonic() + timeout
        for t in workers:
            t.join(max(0.0, deadline - time.monotonic()))


_dispatcher: Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def dispatcher() -> Dispatcher:
    """The process-wide dispatcher (created on first use, and again after a fork)."""
    global _dispatcher
    with _dispatcher_lock:
        if _dispatcher is None:
            _dispatcher = Dispatcher()
        return _dispatcher


def _forget() -> None:
    global _dispatcher, _dispatcher_lock
    _dispatcher = None  # threads do not survive fork
    _dispatcher_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)


@atexit.register
def _close_at_exit() -> None:
    d = _dispatcher
    if d is not None:
        d.close()

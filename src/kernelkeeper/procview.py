"""The process of whatever kernel a lifecycle manager runs now.

Clients hold this view rather than a process manager, so that they keep
working across restarts (same ports, new process). The lifecycle manager
calls :meth:`CurrentProcess.process_changed` whenever its process is
replaced or dropped, so a view can tell a new generation from the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .managerabc import KernelManagerABC
from .subproc import KernelManager as ProcessManager

__all__ = ["CurrentProcess"]

T = TypeVar("T")


async def _on_loop_of(p: ProcessManager, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``call()`` on the loop that watches ``p``.

    The view is handed out (jupyter_client's ``km.provisioner``) to code that
    may run on another loop than the blocking face's library loop; the
    process's futures belong to the loop that watches it.
    """
    owner = getattr(p, "_loop", None)
    here = asyncio.get_running_loop()
    if owner is None or owner is here or owner.is_closed() or not owner.is_running():
        return await call()
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), owner))


class CurrentProcess(KernelManagerABC):
    """A :class:`KernelManagerABC` that forwards to the manager's current process."""

    def __init__(
        self,
        get_process: Callable[[], ProcessManager | None],
        get_kernel_id: Callable[[], str],
        interrupt: Callable[[], Awaitable[None]],
    ) -> None:
        self._get = get_process
        self._get_kernel_id = get_kernel_id
        self._interrupt = interrupt
        self._generation = 0
        self._seen: ProcessManager | None = None
        # The process before the current one: while the manager has none (a
        # restart in progress, after a shutdown), its exit is still the news.
        self._previous: ProcessManager | None = None
        self._changed: list[asyncio.Future[None]] = []

    @property
    def kernel_id(self) -> str | None:  # type: ignore[override]
        return self._get_kernel_id()

    def process_changed(self) -> None:
        """Called by the lifecycle manager when its process is replaced or dropped.

        A new process starts a new :attr:`generation`; whoever waits in
        :meth:`wait_restarted` looks again.
        """
        p = self._get()
        if p is not None and p is not self._seen:
            self._generation += 1
        if self._seen is not None and p is not self._seen:
            self._previous = self._seen
        self._seen = p
        waiters, self._changed = self._changed, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    @property
    def generation(self) -> int:
        """Counts the processes this view has seen replace one another."""
        return self._generation

    async def wait_restarted(self) -> None:
        """Wait until the manager runs a live process (returns at once if it does)."""
        while True:
            p = self._get()
            if p is not None and await p.is_alive():
                return
            fut = asyncio.get_running_loop().create_future()
            self._changed.append(fut)
            try:
                await fut
            finally:
                with contextlib.suppress(ValueError):
                    self._changed.remove(fut)

    async def is_alive(self) -> bool:
        p = self._get()
        return p is not None and await _on_loop_of(p, p.is_alive)

    async def wait(self) -> bool:
        p = self._get()
        return False if p is None else await p.wait()

    async def signal(self, signum: int) -> None:
        p = self._get()
        if p is not None:
            await _on_loop_of(p, lambda: p.signal(signum))

    async def interrupt(self) -> None:
        await self._interrupt()

    async def kill(self) -> None:
        p = self._get()
        if p is not None:
            await _on_loop_of(p, p.kill)

    def _last(self) -> ProcessManager | None:
        p = self._get()
        return p if p is not None else self._previous

    @property
    def exit_code(self) -> int | None:
        """The current process's exit status; with none, that of the one before it."""
        p = self._last()
        return None if p is None else p.exit_code

    def stderr_tail(self) -> str:
        """The current (or, with none, the previous) process's stderr tail."""
        p = self._last()
        return "" if p is None else p.stderr_tail()

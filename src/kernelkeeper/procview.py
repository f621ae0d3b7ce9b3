"""The process of whatever kernel a lifecycle manager runs now.

Clients hold this view rather than a process manager, so that they keep
working across restarts (same ports, new process). The lifecycle manager
calls :meth:`CurrentProcess.process_changed` whenever its process is
replaced or dropped, so a view can tell a new generation from the old one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .managerabc import KernelManagerABC
from .subproc import KernelManager as ProcessManager

__all__ = ["CurrentProcess"]


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

    @property
    def kernel_id(self) -> str | None:  # type: ignore[override]
        return self._get_kernel_id()

    def process_changed(self) -> None:
        """Called by the lifecycle manager when its process is replaced or dropped."""

    async def is_alive(self) -> bool:
        p = self._get()
        return p is not None and await p.is_alive()

    async def wait(self) -> bool:
        p = self._get()
        return False if p is None else await p.wait()

    async def signal(self, signum: int) -> None:
        p = self._get()
        if p is not None:
            await p.signal(signum)

    async def interrupt(self) -> None:
        await self._interrupt()

    async def kill(self) -> None:
        p = self._get()
        if p is not None:
            await p.kill()

    @property
    def exit_code(self) -> int | None:
        p = self._get()
        return None if p is None else p.exit_code

    def stderr_tail(self) -> str:
        p = self._get()
        return "" if p is None else p.stderr_tail()

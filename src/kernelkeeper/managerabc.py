"""The process-level kernel manager interface (jupyter_kernel_mgmt's ``KernelManagerABC``).

A ``KernelManagerABC`` controls one kernel's *process* (or whatever runs it
remotely): liveness, signals, kill, cleanup. It does not talk the messaging
protocol; clients do that. Providers that run kernels elsewhere implement
this interface; local subprocess kernels use :class:`kernelkeeper.subproc.KernelManager`.
"""

from __future__ import annotations

import abc
import asyncio

__all__ = ["KernelManagerABC"]


class KernelManagerABC(abc.ABC):
    """Abstract base class from which all process-level kernel managers derive."""

    #: The id associated with the kernel.
    kernel_id: str | None = None

    @abc.abstractmethod
    async def is_alive(self) -> bool:
        """Check whether the kernel is currently alive (e.g. the process exists)."""

    @abc.abstractmethod
    async def wait(self) -> bool:
        """Wait for the kernel process to exit.

        Returns True if the kernel is still alive after waiting, False if it
        exited (like :meth:`is_alive`).
        """

    @abc.abstractmethod
    async def signal(self, signum: int) -> None:
        """Send a signal to the kernel."""

    @abc.abstractmethod
    async def interrupt(self) -> None:
        """Interrupt the kernel by sending it a signal or similar event.

        Kernels can ask for interrupts as messages rather than signals; the
        process manager does not handle that. ``KernelClient.interrupt`` (or
        the lifecycle manager's ``interrupt_kernel``) sends an
        ``interrupt_request`` or calls this method as appropriate.
        """

    @abc.abstractmethod
    async def kill(self) -> None:
        """Forcibly terminate the kernel.

        For a kernel that will not shut down. Working kernels should be shut
        down with a ``shutdown_request`` and given some time to clean up.
        """

    async def cleanup(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Clean up any resources, such as files created by the manager."""

    # Optional extras a manager may provide; clients use them when present.
    @property
    def exit_code(self) -> int | None:
        """The process's exit status once it has exited, else None."""
        return None

    def stderr_tail(self) -> str:
        """The last lines the kernel wrote to stderr, when they were captured."""
        return ""

    @property
    def generation(self) -> int:
        """A number that changes whenever the kernel runs in a new process (a restart).

        Clients use it to tell a death of the process they talked to from the
        state of its successor. The default never changes: one process only.
        """
        return 0

    async def wait_restarted(self) -> None:
        """Wait until the kernel runs (again) in a live process.

        Returns at once while the kernel is alive. After an exit, a manager
        that restarts kernels returns once the new process runs; the default
        waits forever, since a plain process does not come back.
        """
        if await self.is_alive():
            return
        await asyncio.get_running_loop().create_future()

"""The kernels by id, and jupyter_client's per-kernel pass-through methods.

:class:`KernelTable` is what the parts of the multi-kernel manager share:
the records by id and the look-ups. :class:`PassThroughMethods` holds
jupyter_client's ``MultiKernelManager`` methods that only hand a call to one
kernel's :class:`AsyncKernelManager` (``is_alive``, ``signal_kernel``,
``connect_iopub``, ...); the manager's own logic is in
:mod:`kernelkeeper.multikernel`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from .activity import KernelRecord, connect_socket
from .errors import LifecycleError, NoSuchKernelId
from .manager import AsyncKernelManager

__all__ = ["KernelTable", "PassThroughMethods", "zmq_stream"]


class KernelTable:
    """The kernels of a multi-kernel manager, by id."""

    _kernels: dict[str, KernelRecord]
    #: The context of the sockets ``connect_*`` hands out.
    context: zmq.Context[Any]

    def list_kernel_ids(self) -> list[str]:
        """The ids of the kernels started (or, with pending kernels, starting) and
        not yet shut down or removed."""
        return list(self._kernels)

    def __len__(self) -> int:
        return len(self._kernels)

    def __contains__(self, kernel_id: object) -> bool:
        return kernel_id in self._kernels

    def _entry(self, kernel_id: str) -> KernelRecord:
        try:
            return self._kernels[kernel_id]
        except KeyError:
            raise NoSuchKernelId(kernel_id) from None

    def get_kernel(self, kernel_id: str) -> AsyncKernelManager:
        """The :class:`AsyncKernelManager` of ``kernel_id``; :class:`NoSuchKernelId` if none."""
        km = self._entry(kernel_id).km
        assert km is not None  # a record is listed only once it has its manager
        return km

    def _started(self, kernel_id: str, action: str) -> AsyncKernelManager:
        """The manager of a kernel whose start is over (pending kernels: else LifecycleError)."""
        entry = self._entry(kernel_id)
        if entry.start_pending:
            raise LifecycleError(f"Kernel {kernel_id} is in a pending state. Cannot {action}.")
        return self.get_kernel(kernel_id)


def zmq_stream(sock: zmq.Socket[Any]) -> Any:
    """``sock`` as tornado's ``ZMQStream`` on the current loop (what jupyter_client's
    ``connect_*`` return, and what jupyter_server calls ``on_recv`` on)."""
    # Imported here: tornado comes with ipykernel, but only these callers need it.
    from zmq.eventloop.zmqstream import ZMQStream

    return ZMQStream(sock)


class PassThroughMethods(KernelTable):
    """jupyter_client's MultiKernelManager methods that act on one kernel's manager."""

    async def interrupt_kernel(self, kernel_id: str) -> None:
        """Interrupt the kernel (SIGINT or interrupt_request, as its spec says).

        A kernel whose (pending) start is not over raises :class:`LifecycleError`.
        """
        await self._started(kernel_id, "interrupt").interrupt_kernel()

    async def signal_kernel(self, kernel_id: str, signum: int) -> None:
        """Send ``signum`` to the kernel's process group."""
        await self.get_kernel(kernel_id).signal_kernel(signum)

    async def is_alive(self, kernel_id: str) -> bool:
        """Is the kernel's process running?"""
        return await self.get_kernel(kernel_id).is_alive()

    async def request_shutdown(self, kernel_id: str, restart: bool = False) -> None:
        """Send the kernel a shutdown_request (see :meth:`AsyncKernelManager.request_shutdown`)."""
        await self.get_kernel(kernel_id).request_shutdown(restart)

    async def finish_shutdown(
        self, kernel_id: str, waittime: float | None = None, pollinterval: float = 0.1
    ) -> None:
        """Wait for the kernel to exit after a shutdown_request, escalating if needed."""
        await self.get_kernel(kernel_id).finish_shutdown(waittime, pollinterval)

    async def cleanup_resources(self, kernel_id: str, restart: bool = False) -> None:
        """Release what a stopped kernel left (its files)."""
        await self.get_kernel(kernel_id).cleanup_resources(restart)

    def get_connection_info(self, kernel_id: str) -> dict[str, Any]:
        """The kernel's connection info as a dict."""
        return self.get_kernel(kernel_id).get_connection_info()

    def add_restart_callback(
        self, kernel_id: str, callback: Callable[[], Any], event: str = "restart"
    ) -> None:
        """Call ``callback()`` on automatic restarts (``restart``) or on death (``dead``)."""
        self.get_kernel(kernel_id).add_restart_callback(callback, event)

    def remove_restart_callback(
        self, kernel_id: str, callback: Callable[[], Any], event: str = "restart"
    ) -> None:
        self.get_kernel(kernel_id).remove_restart_callback(callback, event)

    # -- sockets ----------------------------------------------------------------

    def _connect(self, kernel_id: str, channel: str, identity: bytes | None) -> Any:
        info = self.get_kernel(kernel_id).connection_info
        if info is None:
            raise LifecycleError(f"Kernel {kernel_id} has no connection info yet (starting)")
        return zmq_stream(connect_socket(self.context, info, channel, identity))

    def connect_iopub(self, kernel_id: str, identity: bytes | None = None) -> Any:
        """A ``ZMQStream`` subscribed to the kernel's iopub (as jupyter_client's; the
        caller closes it). Its socket is a plain zmq socket of :attr:`context`."""
        return self._connect(kernel_id, "iopub", identity)

    def connect_shell(self, kernel_id: str, identity: bytes | None = None) -> Any:
        """A ``ZMQStream`` connected to the kernel's shell."""
        return self._connect(kernel_id, "shell", identity)

    def connect_control(self, kernel_id: str, identity: bytes | None = None) -> Any:
        """A ``ZMQStream`` connected to the kernel's control channel."""
        return self._connect(kernel_id, "control", identity)

    def connect_stdin(self, kernel_id: str, identity: bytes | None = None) -> Any:
        """A ``ZMQStream`` connected to the kernel's stdin."""
        return self._connect(kernel_id, "stdin", identity)

    def connect_hb(self, kernel_id: str, identity: bytes | None = None) -> Any:
        """A ``ZMQStream`` connected to the kernel's heartbeat."""
        return self._connect(kernel_id, "hb", identity)

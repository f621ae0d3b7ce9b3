"""jupyter_client's state-like names on a kernel manager: ``ready``, ``context``,
``owns_kernel``, ``shutting_down`` and how the last shutdown went.

:class:`JupyterState` is a base of :class:`~kernelkeeper.stopping.KernelStopping`
(which settles ``ready`` and closes ``context``); the attributes it declares
are set by ``AsyncKernelManager.__init__``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
from typing import Any

import zmq
import zmq.asyncio

from .states import KernelState

__all__ = ["JupyterState", "ShutdownStatus"]

S = KernelState


class ShutdownStatus(enum.Enum):
    """How the last shutdown went (jupyter_client's names and values)."""

    Unset = None
    ShutdownRequest = "ShutdownRequest"  # asked, and the kernel exited (or is exiting)
    SigtermRequest = "SigtermRequest"  # it did not exit in time: SIGTERM
    SigkillRequest = "SigkillRequest"  # it ignored SIGTERM too: SIGKILL


def _new_future() -> asyncio.Future[None] | concurrent.futures.Future[None]:
    try:
        return asyncio.get_running_loop().create_future()
    except RuntimeError:  # no loop running: a thread-safe future, as jupyter_client does
        return concurrent.futures.Future()


class JupyterState:
    """jupyter_client's future, context and flags of one kernel manager."""

    _state: KernelState
    _shutdowns_waiting: int
    _owns_kernel: bool
    _context: zmq.asyncio.Context | None
    _context_own: bool
    _ready: asyncio.Future[None] | concurrent.futures.Future[None] | None
    _ready_override: Any
    #: How the last shutdown ended (jupyter_client's ``_shutdown_status``).
    shutdown_status: ShutdownStatus = ShutdownStatus.Unset

    # -- readiness as jupyter_client's future -----------------------------------

    @property
    def ready(self) -> Any:
        """A future done when the last start, restart or shutdown is over, failed with its
        error.

        jupyter_client's ``km.ready``: an asyncio future of the loop that
        started the kernel (a ``concurrent.futures.Future`` when read before
        any loop ran). It says the process is up; ``client().wait_for_ready()``
        says the kernel answers.
        """
        if self._ready_override is not None:
            return self._ready_override
        if self._ready is None:
            self._ready = _new_future()
        return self._ready

    @ready.setter
    def ready(self, value: Any) -> None:
        # A multi-kernel manager puts its own future here (it also covers its pools).
        self._ready_override = value

    def _begin_ready(self) -> asyncio.Future[None] | concurrent.futures.Future[None]:
        fut = self._ready
        if fut is None or fut.done():
            fut = self._ready = _new_future()
        return fut

    @staticmethod
    def _settle_ready(
        fut: asyncio.Future[None] | concurrent.futures.Future[None], error: BaseException | None
    ) -> None:
        if fut.done():
            return
        if error is None:
            fut.set_result(None)
        elif isinstance(error, Exception):
            fut.set_exception(error)
            fut.exception()  # seen: the caller gets the error raised anyway
        else:
            fut.cancel()

    @property
    def _shutdown_status(self) -> ShutdownStatus:
        """jupyter_client's name of :attr:`shutdown_status`."""
        return self.shutdown_status

    @property
    def owns_kernel(self) -> bool:
        """Does this manager stop the kernel? (False: shutdown_kernel leaves it running.)"""
        return self._owns_kernel

    @property
    def shutting_down(self) -> bool:
        """Is a shutdown in progress?"""
        return self._state is S.SHUTTING_DOWN or self._shutdowns_waiting > 0

    @property
    def context(self) -> zmq.asyncio.Context:
        """A zmq context of this manager's own (or the one given as ``context=``).

        kernelkeeper's clients do not use it; it is there for code written for
        jupyter_client that makes sockets from ``km.context``. A context of
        our own is destroyed by a full cleanup (``shutdown_kernel``,
        ``cleanup_resources``) and made anew by the next start.
        """
        if self._context is None:
            self._context, self._context_own = zmq.asyncio.Context(), True
        return self._context

    @context.setter
    def context(self, value: Any) -> None:
        self._context, self._context_own = value, False

    def _close_context(self) -> None:
        # One not made yet is made and destroyed: jupyter_client's managers make
        # theirs up front, and code written for them checks km.context.closed.
        ctx = self.context
        if self._context_own and not ctx.closed:
            # linger: a socket someone left open must not hold the cleanup up.
            ctx.destroy(linger=100)

    def _reopen_context(self) -> None:
        if self._context is not None and self._context_own and self._context.closed:
            self._context = None

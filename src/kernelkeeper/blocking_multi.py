"""The blocking multi-kernel manager: :class:`AsyncMultiKernelManager` on the library's loop.

Every call hands the async core's coroutine to the loop thread and waits,
as :mod:`kernelkeeper.blocking` does for one kernel; nothing here decides
anything. Kernels still running when the interpreter exits are killed and
their files removed.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import zmq

from . import loopthread
from .blocking import BlockingKernelClient, KernelManager
from .events import KernelEvent
from .loopthread import portal
from .manager import AsyncKernelManager
from .metrics import Metrics
from .multikernel import AsyncMultiKernelManager, connect_socket
from .multikernel_compat import zmq_stream

__all__ = ["MultiKernelManager"]

T = TypeVar("T")

_live: weakref.WeakSet[MultiKernelManager] = weakref.WeakSet()


def _forget() -> None:
    global _live
    _live = weakref.WeakSet()  # a forked child does not own its parent's kernels


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)


class _MultiKernel(KernelManager):
    """The blocking face of one kernel of a :class:`MultiKernelManager`, with
    jupyter_client's ``ready`` and ``session``."""

    _ready_of: Callable[[], asyncio.Future[None]]

    @classmethod
    def of(cls, akm: AsyncKernelManager, ready: Callable[[], asyncio.Future[None]]) -> _MultiKernel:
        face = cls.from_async(akm)
        face._ready_of = ready
        return face

    @property
    def ready(self) -> concurrent.futures.Future[None]:
        """Done when the kernel's start (or the restart or shutdown since) is over."""
        return self._portal.call(lambda: _mirror(self._ready_of()))

    @property
    def session(self) -> Any:
        """jupyter_client's ``km.session`` (a :class:`JupyterSession`)."""
        return getattr(self._akm, "session", None)


def _mirror(src: asyncio.Future[None]) -> concurrent.futures.Future[None]:
    """A thread-safe future settled like ``src`` (called on the loop)."""
    dst: concurrent.futures.Future[None] = concurrent.futures.Future()

    def copy(f: asyncio.Future[None]) -> None:
        if f.cancelled():
            dst.cancel()
        elif f.exception() is not None:
            dst.set_exception(f.exception())  # type: ignore[arg-type]
        else:
            dst.set_result(None)

    if src.done():
        copy(src)
    else:
        src.add_done_callback(copy)
    return dst


class MultiKernelManager:
    """Manages many kernels by id (blocking API; jupyter_client's MultiKernelManager).

    The same arguments as :class:`AsyncMultiKernelManager`; the methods are
    plain calls. :attr:`context` is a zmq context of this manager's own for
    the sockets ``connect_*`` returns.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._portal = portal()
        self._amkm: AsyncMultiKernelManager = self._portal.call(AsyncMultiKernelManager, **kwargs)
        self.context: zmq.Context[Any] = zmq.Context()
        self._faces: dict[str, _MultiKernel] = {}
        _live.add(self)

    def __repr__(self) -> str:
        return repr(self._amkm).replace("AsyncMultiKernelManager", "MultiKernelManager")

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._portal.run(coro)

    @property
    def async_manager(self) -> AsyncMultiKernelManager:
        """The async manager this one drives (lives on the library's loop)."""
        return self._amkm

    @property
    def metrics(self) -> Metrics:
        return self._amkm.metrics

    default_kernel_name = property(lambda self: self._amkm.default_kernel_name)

    # -- ids --------------------------------------------------------------------

    def list_kernel_ids(self) -> list[str]:
        return self._portal.call(self._amkm.list_kernel_ids)

    def __len__(self) -> int:
        return self._portal.call(self._amkm.__len__)

    def __contains__(self, kernel_id: object) -> bool:
        return self._portal.call(self._amkm.__contains__, kernel_id)

    def new_kernel_id(self, **kwargs: Any) -> str:
        return self._amkm.new_kernel_id(**kwargs)

    def get_kernel(self, kernel_id: str) -> KernelManager:
        """The blocking :class:`KernelManager` of ``kernel_id`` (NoSuchKernelId if none)."""
        akm = self._portal.call(self._amkm.get_kernel, kernel_id)
        face = self._faces.get(kernel_id)
        if face is None or face._akm is not akm:
            self._faces = {k: f for k, f in self._faces.items() if k in self}
            face = self._faces[kernel_id] = self._face(kernel_id, akm)
        return face

    def _face(self, kernel_id: str, akm: AsyncKernelManager) -> _MultiKernel:
        fut = self._portal.call(self._amkm.kernel_ready, kernel_id)
        amkm = self._amkm

        def ready() -> asyncio.Future[None]:
            # The manager's current one while it has the kernel, else the last seen.
            nonlocal fut
            with contextlib.suppress(KeyError):
                fut = amkm.kernel_ready(kernel_id)
            return fut

        return _MultiKernel.of(akm, ready)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Fill the warm pools and start the culler."""
        self._run(self._amkm.start())

    def start_kernel(
        self, kernel_name: str | None = None, kernel_id: str | None = None, **kw: Any
    ) -> str:
        """Start a kernel and return its id (see :meth:`AsyncMultiKernelManager.start_kernel`)."""
        return self._run(self._amkm.start_kernel(kernel_name, kernel_id, **kw))

    def shutdown_kernel(self, kernel_id: str, now: bool = False, restart: bool = False) -> None:
        """Shut the kernel down and forget it."""
        self._run(self._amkm.shutdown_kernel(kernel_id, now, restart))

    def shutdown_all(self, now: bool = False) -> None:
        """Shut every kernel down: running, starting and pooled."""
        self._run(self._amkm.shutdown_all(now))

    def close(self, now: bool = True) -> None:
        """Stop the culler and end every kernel."""
        self._run(self._amkm.aclose(now))

    def restart_kernel(self, kernel_id: str, now: bool = False, **kw: Any) -> None:
        """Restart the kernel on the same ports; returns once it is ready."""
        self._run(self._amkm.restart_kernel(kernel_id, now, **kw))

    def interrupt_kernel(self, kernel_id: str) -> None:
        self._run(self._amkm.interrupt_kernel(kernel_id))

    def signal_kernel(self, kernel_id: str, signum: int) -> None:
        self._run(self._amkm.signal_kernel(kernel_id, signum))

    def is_alive(self, kernel_id: str) -> bool:
        return self._run(self._amkm.is_alive(kernel_id))

    def request_shutdown(self, kernel_id: str, restart: bool = False) -> None:
        self._run(self._amkm.request_shutdown(kernel_id, restart))

    def finish_shutdown(
        self, kernel_id: str, waittime: float | None = None, pollinterval: float = 0.1
    ) -> None:
        self._run(self._amkm.finish_shutdown(kernel_id, waittime, pollinterval))

    def cleanup_resources(self, kernel_id: str, restart: bool = False) -> None:
        self._run(self._amkm.cleanup_resources(kernel_id, restart))

    def remove_kernel(self, kernel_id: str) -> KernelManager | None:
        """Forget a kernel without shutting it down; returns its manager, or None."""
        face = self._faces.pop(kernel_id, None)
        if face is None and kernel_id in self:
            face = self._face(kernel_id, self._portal.call(self._amkm.get_kernel, kernel_id))
        akm = self._portal.call(self._amkm.remove_kernel, kernel_id)
        if akm is None:
            return None
        return face if face is not None and face._akm is akm else KernelManager.from_async(akm)

    def cull_idle(self) -> list[str]:
        """Run one culling check now; returns the ids culled."""
        return self._run(self._amkm.cull_idle())

    def cull_kernel(self, kernel_id: str, reason: str) -> None:
        self._run(self._amkm.cull_kernel(kernel_id, reason))

    # -- connections and activity -------------------------------------------------

    def get_connection_info(self, kernel_id: str) -> dict[str, Any]:
        return self._portal.call(self._amkm.get_connection_info, kernel_id)

    def _connect(self, kernel_id: str, channel: str, identity: bytes | None) -> Any:
        info = self._portal.call(self._amkm.get_kernel, kernel_id).connection_info
        assert info is not None  # the manager only holds started kernels

        def make() -> Any:
            # On the loop: the stream's callbacks run there, as the loop always runs.
            return zmq_stream(connect_socket(self.context, info, channel, identity))

        return self._portal.call(make)

    def connect_iopub(self, kernel_id: str, identity: bytes | None = None) -> Any:
        return self._connect(kernel_id, "iopub", identity)

    def connect_shell(self, kernel_id: str, identity: bytes | None = None) -> Any:
        return self._connect(kernel_id, "shell", identity)

    def connect_control(self, kernel_id: str, identity: bytes | None = None) -> Any:
        return self._connect(kernel_id, "control", identity)

    def connect_stdin(self, kernel_id: str, identity: bytes | None = None) -> Any:
        return self._connect(kernel_id, "stdin", identity)

    def connect_hb(self, kernel_id: str, identity: bytes | None = None) -> Any:
        return self._connect(kernel_id, "hb", identity)

    def client(self, kernel_id: str, **kwargs: Any) -> BlockingKernelClient:
        """A blocking client of the kernel, counted in ``connections`` while it runs."""
        ac = self._portal.call(self._amkm.client, kernel_id, **kwargs)
        return BlockingKernelClient(async_client=ac)

    def add_connection(self, kernel_id: str) -> None:
        self._portal.call(self._amkm.add_connection, kernel_id)

    def remove_connection(self, kernel_id: str) -> None:
        self._portal.call(self._amkm.remove_connection, kernel_id)

    def kernel_model(self, kernel_id: str) -> dict[str, Any]:
        return self._portal.call(self._amkm.kernel_model, kernel_id)

    def add_event_listener(self, callback: Callable[[KernelEvent], Any]) -> None:
        self._amkm.add_event_listener(callback)

    def remove_event_listener(self, callback: Callable[[KernelEvent], Any]) -> None:
        self._amkm.remove_event_listener(callback)

    def add_restart_callback(
        self, kernel_id: str, callback: Callable[[], Any], event: str = "restart"
    ) -> None:
        self._portal.call(self._amkm.add_restart_callback, kernel_id, callback, event)

    def remove_restart_callback(
        self, kernel_id: str, callback: Callable[[], Any], event: str = "restart"
    ) -> None:
        self._portal.call(self._amkm.remove_restart_callback, kernel_id, callback, event)

    def __enter__(self) -> MultiKernelManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _shutdown_leftovers() -> None:
    lt = loopthread.current()
    managers = [m for m in list(_live) if m._portal is lt]
    if not managers or lt is None:
        return

    async def stop_all() -> None:
        await asyncio.gather(*(m._amkm.aclose(now=True) for m in managers), return_exceptions=True)

    with contextlib.suppress(Exception):
        lt.run(stop_all(), timeout=10)

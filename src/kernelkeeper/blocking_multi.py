"""The blocking multi-kernel manager: :class:`AsyncMultiKernelManager` on the portal.

Derived from the async class at import, as :mod:`kernelkeeper.blocking` is
for one kernel (see :mod:`kernelkeeper.face`): every call hands the async
core's method to the portal's loop and waits; nothing here decides
anything. What differs is only construction, ``close`` and the context
manager, and ``get_kernel``'s faces, which carry jupyter_client's ``ready``.
Kernels still running when the interpreter exits are killed and their files
removed.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import weakref
from typing import Any

from . import loopthread
from .blocking import KernelManager
from .face import Face, derive, mirror, register
from .loopthread import LoopThread
from .manager import AsyncKernelManager
from .multikernel import AsyncMultiKernelManager

__all__ = ["MultiKernelManager"]

_live: weakref.WeakSet[MultiKernelManager] = weakref.WeakSet()


def _forget() -> None:
    global _live
    _live = weakref.WeakSet()  # a forked child does not own its parent's kernels


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)


class _MultiKernel(KernelManager):
    """The blocking face of one kernel of a :class:`MultiKernelManager`, with
    jupyter_client's ``ready`` (done when the kernel's start, or the restart or
    shutdown since, is over)."""

    _amkm: AsyncMultiKernelManager
    _kernel_id: str
    _last_ready: asyncio.Future[None] | None = None

    @property
    def ready(self) -> concurrent.futures.Future[None]:
        """Done when the kernel's start (or the restart or shutdown since) is over."""

        def current() -> concurrent.futures.Future[None]:
            # The manager's current one while it has the kernel, else the last seen.
            with contextlib.suppress(KeyError):
                self._last_ready = self._amkm.kernel_ready(self._kernel_id)
            assert self._last_ready is not None
            return mirror(self._last_ready)

        return self._portal.call(current)


@derive(AsyncMultiKernelManager)
class MultiKernelManager(Face):
    """Manages many kernels by id (blocking API; jupyter_client's MultiKernelManager).

    The same arguments and methods as :class:`AsyncMultiKernelManager`, as
    plain calls. ``connect_*`` return tornado ``ZMQStream`` objects on the
    portal's loop, their sockets from :attr:`context`.

    :param portal: the loop thread to run on (default: the library's own).
    """

    def __init__(self, *, portal: LoopThread | None = None, **kwargs: Any) -> None:
        p = portal or loopthread.portal()
        self._bind(p.call(AsyncMultiKernelManager, **kwargs), p)
        self._kernel_faces: dict[str, _MultiKernel] = {}
        _live.add(self)

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncMultiKernelManager", "MultiKernelManager")

    @property
    def async_manager(self) -> AsyncMultiKernelManager:
        """The async manager this one drives (lives on the portal's loop)."""
        amkm: AsyncMultiKernelManager = self._async
        return amkm

    def get_kernel(self, kernel_id: str) -> KernelManager:
        """The blocking :class:`KernelManager` of ``kernel_id`` (NoSuchKernelId if none)."""
        akm = self._portal.call(self.async_manager.get_kernel, kernel_id)
        face = self._kernel_faces.get(kernel_id)
        if face is None or face.async_manager is not akm:
            ids = set(self._portal.call(self.async_manager.list_kernel_ids))
            self._kernel_faces = {k: f for k, f in self._kernel_faces.items() if k in ids}
            face = self._kernel_faces[kernel_id] = self._face(kernel_id, akm)
        return face

    def _face(self, kernel_id: str, akm: AsyncKernelManager) -> _MultiKernel:
        face = _MultiKernel.from_async(akm, self._portal)
        face._amkm = self.async_manager
        face._kernel_id = kernel_id
        # Remembered now: after a shutdown the record (and its future) is gone.
        face._last_ready = self._portal.call(self.async_manager.kernel_ready, kernel_id)
        return face

    def remove_kernel(self, kernel_id: str) -> KernelManager | None:
        """Forget a kernel without shutting it down; returns its manager, or None."""
        face = self._kernel_faces.pop(kernel_id, None)
        if face is None and kernel_id in self._portal.call(self.async_manager.list_kernel_ids):
            face = self._face(
                kernel_id, self._portal.call(self.async_manager.get_kernel, kernel_id)
            )
        akm = self._portal.call(self.async_manager.remove_kernel, kernel_id)
        if akm is None:
            return None
        if face is not None and face.async_manager is akm:
            return face
        return KernelManager.from_async(akm, self._portal)

    def close(self, now: bool = True) -> None:
        """Stop the culler and end every kernel."""
        self._portal.run(self.async_manager.aclose(now))

    def __enter__(self) -> MultiKernelManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


register(AsyncMultiKernelManager, lambda amkm, p: _wrap_multi(amkm, p))


def _wrap_multi(amkm: AsyncMultiKernelManager, p: LoopThread) -> MultiKernelManager:
    face = MultiKernelManager.__new__(MultiKernelManager)
    face._bind(amkm, p)
    face._kernel_faces = {}
    return face


@atexit.register
def _shutdown_leftovers() -> None:
    for m in list(_live):
        lt = m._portal
        if lt.pid != os.getpid() or not lt.thread.is_alive() or lt.loop.is_closed():
            continue
        with contextlib.suppress(Exception):
            lt.run(m.async_manager.aclose(now=True), timeout=10)

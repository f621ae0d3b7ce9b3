"""Ending kernels of the multi-kernel manager: shutdown (also of starts under
way and, with pending kernels, in the background), removal, and culling.

A part of :class:`~kernelkeeper.multikernel.AsyncMultiKernelManager`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from .activity import KernelRecord, Tombstone, resolve
from .events import KernelEvent
from .manager import AsyncKernelManager
from .metrics import Metrics
from .multikernel_compat import KernelTable
from .states import KernelState

__all__ = ["KernelEnding"]

log = logging.getLogger("kernelkeeper.multikernel")


class KernelEnding(KernelTable):
    """Shutdown, removal and culling over the kernel table."""

    _starting: dict[str, KernelRecord]
    _culled: dict[str, Tombstone]
    _closing: list[asyncio.Task[Any]]
    use_pending_kernels: bool
    metrics: Metrics
    _emit: Callable[[KernelEvent], None]  # (ActivityMethods)

    async def shutdown_kernel(
        self, kernel_id: str, now: bool = False, restart: bool = False
    ) -> None:
        """Shut the kernel down and forget it; a kernel still starting is ended at once.

        With ``use_pending_kernels`` the shutdown goes on in the background
        (the kernel is listed until it is over; ``ready`` then resolves); a
        kernel whose pending start failed is just forgotten.
        """
        starting = self._starting.get(kernel_id)
        if starting is not None:
            await self._end_start(starting)
            return
        entry = self._entry(kernel_id)
        if entry.stop_task is not None:  # a pending shutdown is under way
            await asyncio.shield(entry.stop_task)
            return
        if entry.start_error is not None:  # nothing left running: _boot cleaned up
            del self._kernels[kernel_id]
            return
        if restart:  # jupyter_client's half of a restart: the kernel stays ours
            await self.get_kernel(kernel_id).shutdown_kernel(now=now, restart=True)
            return
        stop = self._stop(entry, now, entry.new_ready())
        if not self.use_pending_kernels:
            await stop
            return
        entry.stop_task = asyncio.get_running_loop().create_task(
            stop, name=f"kk-stop-{kernel_id[:8]}"
        )
        self._own(entry.stop_task)

    async def _stop(self, entry: KernelRecord, now: bool, ready: asyncio.Future[None]) -> None:
        try:
            if entry.start_pending:
                await self._end_start(entry)
            else:
                assert entry.km is not None
                await entry.km.shutdown_kernel(now=now)
        except BaseException as e:
            entry.stop_task = None  # it may be tried again
            resolve(ready, e)
            if isinstance(e, Exception) and self.use_pending_kernels:
                log.warning("Shutting down kernel %s failed: %s", entry.kernel_id, e)
                return
            raise
        if self._kernels.get(entry.kernel_id) is entry:
            del self._kernels[entry.kernel_id]
        await entry.aclose()
        resolve(ready)

    async def _end_start(self, entry: KernelRecord) -> None:
        entry.ending = True
        if entry.km is not None:
            await entry.km.shutdown_kernel(now=True)  # abandons its launch at once
        await entry.start_done.wait()
        if entry.start_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await entry.start_task

    def _own(self, task: asyncio.Task[Any]) -> None:
        self._closing = [t for t in self._closing if not t.done()]
        self._closing.append(task)

    def remove_kernel(self, kernel_id: str) -> AsyncKernelManager | None:
        """Forget a kernel without shutting it down (e.g. one that died); returns its
        manager, or None. Also forgets a culled kernel's model."""
        self._culled.pop(kernel_id, None)
        entry = self._kernels.pop(kernel_id, None)
        if entry is None:
            return None
        self._own(asyncio.get_running_loop().create_task(self._close_removed(entry)))
        return entry.km

    @staticmethod
    async def _close_removed(entry: KernelRecord) -> None:
        if entry.start_task is not None:  # a pending start goes on; then the kernel is theirs
            with contextlib.suppress(asyncio.CancelledError):
                await entry.start_task
        await entry.aclose()

    async def cull_kernel(self, kernel_id: str, reason: str) -> None:
        """End the kernel and keep a dead model with ``reason``; emits ``culled``."""
        entry = self._entry(kernel_id)
        last = entry.activity.last_activity
        log.info("Culling kernel %s (%s): %s", kernel_id, entry.kernel_name, reason)
        # Before the shutdown: whoever sees the kernel end (a gateway closing its
        # sockets on the shutdown event) and asks for its model finds the reason.
        self._culled[kernel_id] = Tombstone(entry.kernel_name, reason, time.time(), last)
        await self.shutdown_kernel(kernel_id)
        self.metrics.culls.inc(kernel_name=entry.kernel_name)
        self._emit(
            KernelEvent(
                "culled",
                kernel_id,
                KernelState.DEAD,
                {"reason": reason, "kernel_name": entry.kernel_name},
            )
        )

"""Automatic restart of a kernel that died on its own.

The restarter waits on the kernel process's exit (an event, not a poll).
When the kernel dies without being asked to, it runs the ``restart``
callbacks and restarts it with the same connection info, up to
``restart_limit`` times in a row; past that it runs the ``dead`` callbacks
and gives up. A kernel that stays up for ``stable_start_time`` seconds after
a restart resets the count.

Callbacks run on a library thread, never on the event loop, in order with
the kernel's lifecycle events (see :mod:`kernelkeeper.callbacks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, LifecycleError

if TYPE_CHECKING:
    from .manager import AsyncKernelManager

__all__ = ["KernelRestarter"]

log = logging.getLogger("kernelkeeper.restarter")

EVENTS = ("restart", "dead")


class KernelRestarter:
    """Watches one managed kernel and restarts it when it dies unexpectedly."""

    def __init__(
        self,
        manager: AsyncKernelManager,
        *,
        restart_limit: int = 5,
        stable_start_time: float = 10.0,
    ) -> None:
        self.manager = manager
        self.restart_limit = restart_limit
        self.stable_start_time = stable_start_time
        self.enabled = False
        self.callbacks: dict[str, list[Callable[[], Any]]] = {e: [] for e in EVENTS}
        self.restart_count = 0
        self._task: asyncio.Task[None] | None = None
        self._reset: asyncio.TimerHandle | None = None

    def add_callback(self, f: Callable[[], Any], event: str = "restart") -> None:
        if event not in self.callbacks:
            raise ConfigurationError(f"Unknown restart event {event!r}; expected one of {EVENTS}")
        self.callbacks[event].append(f)

    def remove_callback(self, f: Callable[[], Any], event: str = "restart") -> None:
        with contextlib.suppress(ValueError, KeyError):
            self.callbacks[event].remove(f)

    def _fire(self, event: str) -> None:
        # Off the loop, after the kernel's earlier events; failures are logged there.
        for f in list(self.callbacks[event]):
            self.manager._deliver(f)

    def watch(self) -> None:
        """(Re)start watching the manager's current process."""
        self.stop()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="kk-restarter")

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if self._reset is not None:
            self._reset.cancel()
            self._reset = None

    async def aclose(self) -> None:
        task = self._task
        self.stop()
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _arm_reset(self) -> None:
        def reset() -> None:
            self.restart_count = 0
            self._reset = None

        if self._reset is not None:
            self._reset.cancel()
        self._reset = asyncio.get_running_loop().call_later(self.stable_start_time, reset)

    async def _watch(self) -> None:
        km = self.manager
        proc = km._proc
        if proc is None:
            return
        await proc.wait()
        if km._stopping:
            return  # a shutdown or restart we asked for
        await km._on_unexpected_exit(proc)
        if not self.enabled:
            return
        if self.restart_count >= self.restart_limit:
            log.warning(
                "Kernel %s died %d times in a row; giving up", km.kernel_id, self.restart_count
            )
            km._mark_dead("restart limit reached")
            self._fire("dead")
            return
        self.restart_count += 1
        log.warning(
            "Kernel %s died (exit code %s); restarting (%d/%d)",
            km.kernel_id,
            proc.exit_code,
            self.restart_count,
            self.restart_limit,
        )
        self._fire("restart")
        self._task = None  # the restart below starts a new watch
        try:
            await km._auto_restart()
        except LifecycleError:
            return  # shutdown_kernel() was called meanwhile: not a failure
        except Exception:
            log.exception("Automatic restart of kernel %s failed", km.kernel_id)
            km._mark_dead("automatic restart failed")
            self._fire("dead")
            return
        self._arm_reset()

"""What the multi-kernel manager knows of its kernels: lifecycle events,
connections, the jupyter_server model, state counts for the metrics, and the
culler's view.

A part of :class:`~kernelkeeper.multikernel.AsyncMultiKernelManager`; the
decisions are in :mod:`kernelkeeper.culling`, the iopub watching in
:mod:`kernelkeeper.activity`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .activity import KernelActivity, KernelRecord, Tombstone, iso_utc
from .callbacks import dispatcher
from .client import AsyncKernelClient
from .culling import Culler, CullPolicy, KernelActivityView
from .errors import NoSuchKernelId
from .events import KernelEvent
from .manager import AsyncKernelManager
from .metrics import Metrics
from .multikernel_compat import KernelTable

__all__ = ["ActivityMethods"]

log = logging.getLogger("kernelkeeper.multikernel")


class ActivityMethods(KernelTable):
    """Events, connections, models, state counts and culling checks over the kernel table."""

    _starting: dict[str, KernelRecord]
    _culled: dict[str, Tombstone]
    _pools: dict[str, Any]
    _culler: Culler
    _loop: asyncio.AbstractEventLoop | None
    _listeners: list[Callable[[KernelEvent], Any]]
    _delivery_key: object
    metrics: Metrics
    wait_for_ready: bool
    ready_timeout: float | None

    def _attach(self, entry: KernelRecord, km: AsyncKernelManager) -> None:
        entry.km = km
        entry.publish()
        loop = self._loop

        def listener(event: KernelEvent) -> None:
            # On a library thread: hand our bookkeeping to the loop, pass the event on.
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._on_kernel_event, entry, event)
            for cb in list(self._listeners):
                try:
                    cb(event)
                except Exception:
                    log.exception("Event listener %r failed", cb)

        entry.listener = listener
        km.add_event_listener(listener)

    def _on_kernel_event(self, entry: KernelRecord, event: KernelEvent) -> None:
        if event.kind == "restarted":
            reason = event.detail.get("reason")
            if reason is None:
                reason = entry.restart_reasons.pop(0) if entry.restart_reasons else "auto"
            self.metrics.restarts.inc(reason=str(reason))
            km = entry.km
            if km is not None and km.connection_info is not None:
                entry.activity.reset()
                entry.activity.follow(km.connection_info)
                if entry.kernel_id in self._kernels and self.wait_for_ready:
                    entry.ensure_ready(self.ready_timeout)  # an autorestart: become idle again
        elif event.kind == "died":
            self.metrics.deaths.inc(kernel_name=entry.kernel_name)

    # -- events -----------------------------------------------------------------

    def add_event_listener(self, callback: Callable[[KernelEvent], Any]) -> None:
        """Call ``callback(event)`` for every kernel's lifecycle events, and ``culled``
        (its ``detail["reason"]``); on a library thread, in order per kernel."""
        self._listeners.append(callback)

    def remove_event_listener(self, callback: Callable[[KernelEvent], Any]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def _emit(self, event: KernelEvent) -> None:
        for cb in list(self._listeners):
            dispatcher().submit(self._delivery_key, cb, event, loop=self._loop)

    # -- use ----------------------------------------------------------------------

    def client(self, kernel_id: str, **kwargs: Any) -> AsyncKernelClient:
        """A client of the kernel, counted in ``connections`` while its channels run."""
        entry = self._entry(kernel_id)
        kc = entry.spare_client if not kwargs else None
        if kc is not None:  # a pool hit's client, connected while the kernel was pooled
            entry.spare_client = None
        else:
            kc = self.get_kernel(kernel_id).client(**kwargs)
        entry.clients.add(kc)
        return kc

    def activity(self, kernel_id: str) -> KernelActivity:
        """What the manager reads from the kernel's iopub (its subscription can be
        tapped: :meth:`KernelActivity.tap`)."""
        return self._entry(kernel_id).activity

    def add_connection(self, kernel_id: str) -> None:
        """Count one more connection (a gateway's websocket) to the kernel."""
        self._entry(kernel_id).extra_connections += 1

    def remove_connection(self, kernel_id: str) -> None:
        """Count one connection less (never below zero)."""
        entry = self._entry(kernel_id)
        entry.extra_connections = max(0, entry.extra_connections - 1)

    def kernel_model(self, kernel_id: str) -> dict[str, Any]:
        """jupyter_server's kernel model: id, name, last_activity, execution_state,
        connections (and ``reason`` for a culled kernel)."""
        t = self._culled.get(kernel_id)
        if t is not None and kernel_id not in self._kernels:
            return {
                "id": kernel_id,
                "name": t.kernel_name,
                "last_activity": iso_utc(t.last_activity),
                "execution_state": "dead",
                "connections": 0,
                "reason": t.reason,
            }
        entry = self._kernels.get(kernel_id) or self._starting.get(kernel_id)
        if entry is None:
            raise NoSuchKernelId(kernel_id)
        model: dict[str, Any] = entry.model()
        return model

    def _count_states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in [*self._kernels.values(), *self._starting.values()]:
            s = e.execution_state()
            counts[s] = counts.get(s, 0) + 1
        return counts

    def _pool_counts(self) -> dict[str, tuple[int, int]]:
        return {name: (int(p.hits), int(p.misses)) for name, p in self._pools.items()}

    # -- culling ----------------------------------------------------------------

    @property
    def cull_policy(self) -> CullPolicy:
        """The culling policy (settable; the running culler uses the new one)."""
        return self._culler.policy

    @cull_policy.setter
    def cull_policy(self, policy: CullPolicy) -> None:
        self._culler.policy = policy
        if self._loop is not None and policy.enabled:
            self._culler.start()

    async def cull_idle(self) -> list[str]:
        """Run one culling check now, whatever the interval; returns the ids culled."""
        return await self._culler.run_once()

    def _snapshot(self) -> list[KernelActivityView]:
        # A kernel whose (pending) start is not over is not the culler's to judge.
        return [e.view() for e in self._kernels.values() if not e.start_pending]

    def _expire(self, now: float) -> None:
        keep = self.cull_policy.retention
        if keep is None:
            return
        for kid, t in list(self._culled.items()):
            if now - t.time >= keep:
                del self._culled[kid]

"""Many kernels: jupyter_client's MultiKernelManager API as an async core, plus activity.

:class:`AsyncMultiKernelManager` starts kernels concurrently (no lock is held
across a start, so a slow kernel never holds up another's start or
shutdown), enforces limits, watches each kernel's iopub with a SUB socket of
its own (:mod:`kernelkeeper.activity`), counts into :mod:`kernelkeeper.metrics`,
culls idle kernels (:mod:`kernelkeeper.culling`), and takes kernels from warm
pools when it has one for the requested type. Its parts: the lifecycle here,
the per-kernel pass-through methods and ``connect_*`` in
:mod:`kernelkeeper.multikernel_compat`, shutting down, removing and culling in
:mod:`kernelkeeper.multikernel_ending`, connections, models and the culler's
view in :mod:`kernelkeeper.multikernel_model`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from .activity import KernelRecord, Tombstone, connect_socket, resolve
from .culling import Culler, CullPolicy
from .errors import (
    DuplicateKernelError,
    KernelLimitError,
    LifecycleError,
    NoSuchKernelId,
)
from .events import KernelEvent
from .manager import AsyncKernelManager
from .metrics import Metrics
from .multikernel_compat import PassThroughMethods
from .multikernel_ending import KernelEnding
from .multikernel_model import ActivityMethods
from .multikernel_sources import KernelSources

__all__ = [
    "AsyncMultiKernelManager",
    "DuplicateKernelError",
    "KernelLimitError",
    "NoSuchKernelId",
    "connect_socket",
]

log = logging.getLogger("kernelkeeper.multikernel")


class AsyncMultiKernelManager(PassThroughMethods, KernelSources, KernelEnding, ActivityMethods):
    """Manages many kernels by id (jupyter_client's AsyncMultiKernelManager API).

    :param default_kernel_name: the type started when none is given.
    :param max_kernels: most kernels at once (starting ones included); more
        raise :class:`KernelLimitError`. ``max_kernels_per_type`` limits by type.
    :param cull: a :class:`~kernelkeeper.culling.CullPolicy`; its task runs
        while the manager is open.
    :param pools: ``{kernel_name: pool}``, each a warm pool or a config with
        ``min_size``, ``max_size``, ``ttl``, ``max_concurrent_starts``.
    :param wait_for_ready: ``start_kernel`` returns once the kernel answers
        kernel_info (``ready_timeout`` seconds at most).
    :param use_pending_kernels: jupyter_client's pending kernels: ``start_kernel``
        and ``shutdown_kernel`` return at once and the work goes on in the
        background; ``get_kernel(id).ready`` (or :meth:`kernel_ready`) resolves
        when it is over, or fails with the start's error. Such a kernel is
        listed from the start; interrupting or restarting it before its start is
        over raises :class:`LifecycleError`.
    :param kernel_manager_kw: passed to every :class:`AsyncKernelManager`
        (``transport``, ``ip``, ``shutdown_wait_time``, ``autorestart``, ...).
    :param config: a jupyter_client-style config; its ``KernelManager``
        section gives defaults for ``kernel_manager_kw``, its
        ``AsyncMultiKernelManager`` section the default of ``use_pending_kernels``.
    """

    def __init__(
        self,
        *,
        default_kernel_name: str = "python3",
        max_kernels: int | None = None,
        max_kernels_per_type: Mapping[str, int] | None = None,
        cull: CullPolicy | None = None,
        pools: Mapping[str, Any] | None = None,
        wait_for_ready: bool = True,
        ready_timeout: float | None = 60.0,
        use_pending_kernels: bool | None = None,
        connection_dir: str = "",
        kernel_manager_kw: Mapping[str, Any] | None = None,
        factory: Callable[..., AsyncKernelManager] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        config = config or {}
        kw = dict(config.get("KernelManager", {}))
        kw.update(kernel_manager_kw or {})
        if use_pending_kernels is None:
            own = config.get("AsyncMultiKernelManager", {})
            use_pending_kernels = bool(own.get("use_pending_kernels", False))
        self.kernel_manager_kw = kw
        self.default_kernel_name = default_kernel_name
        self.max_kernels = max_kernels
        self.max_kernels_per_type = dict(max_kernels_per_type or {})
        self.wait_for_ready = wait_for_ready
        self.ready_timeout = ready_timeout
        self.use_pending_kernels = use_pending_kernels
        self.connection_dir = connection_dir
        self._factory = factory or AsyncKernelManager
        #: The zmq context of the sockets ``connect_*`` hands out (ours use their
        #: own). Plain, not asyncio: tornado's ZMQStream takes only plain sockets.
        self.context: zmq.Context[Any] = zmq.Context()
        self._kernels: dict[str, KernelRecord] = {}
        self._starting: dict[str, KernelRecord] = {}
        self._culled: dict[str, Tombstone] = {}
        self._pools: dict[str, Any] = {}
        self._pool_configs = dict(pools or {})
        self._listeners: list[Callable[[KernelEvent], Any]] = []
        self._delivery_key = object()
        # Background work we own (pending shutdowns, removed records closing):
        # shutdown_all awaits it.
        self._closing: list[asyncio.Task[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics = Metrics(self._count_states, self._pool_counts)
        self._culler = Culler(cull or CullPolicy(), self._snapshot, self.cull_kernel, self._expire)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._kernels)} kernels>"

    def new_kernel_id(self, **kwargs: Any) -> str:
        """The id for a new kernel (a uuid4)."""
        return str(uuid.uuid4())

    def kernel_ready(self, kernel_id: str) -> asyncio.Future[None]:
        """jupyter_client's ``get_kernel(id).ready``: resolved when the kernel's start
        (or the restart or shutdown since) is over, failed with its error."""
        return self._entry(kernel_id).ready

    # -- starting ---------------------------------------------------------------

    async def start(self) -> None:
        """Fill the warm pools and start the culler (``start_kernel`` does it too)."""
        self._loop = asyncio.get_running_loop()
        if self.cull_policy.enabled:
            self._culler.start()
        await self._fill_pools()

    async def start_kernel(
        self, kernel_name: str | None = None, kernel_id: str | None = None, **kw: Any
    ) -> str:
        """Start a kernel and return its id (``kernel_id``, or a new one).

        Keyword arguments go to :meth:`AsyncKernelManager.start_kernel`
        (``cwd``, ``env``, ...). A start ended meanwhile by
        :meth:`shutdown_kernel` or :meth:`shutdown_all` returns its id, as in
        jupyter_client; that id is no longer in the manager then. With
        ``use_pending_kernels`` it returns as soon as the kernel has a manager.
        """
        await self.start()
        name = kernel_name or self.default_kernel_name
        kid = kernel_id or self.new_kernel_id(**kw)
        if kid in self._kernels or kid in self._starting:
            raise DuplicateKernelError(f"Kernel already exists: {kid}")
        self._check_limits(name)
        entry = KernelRecord(kid, name)
        self._starting[kid] = entry  # counted in the limits from here on
        self._culled.pop(kid, None)
        t0 = time.monotonic()
        # The default ids are uuid4s, as a pooled kernel's own: keeping that saves
        # a rename. A subclass's new_kernel_id (its own id scheme) is honoured.
        id_given = kernel_id is not None or (
            type(self).new_kernel_id is not AsyncMultiKernelManager.new_kernel_id
        )
        try:
            km, pooled = await self._obtain(entry, kw, id_given)
        except BaseException as e:
            await self._discard(entry)
            resolve(entry.ready, e)
            if entry.ending and isinstance(e, Exception):
                return kid
            self.metrics.start_failures.inc(kernel_name=name)
            raise
        kid = entry.kernel_id  # a pooled kernel's own id
        self._attach(entry, km)
        if not self.use_pending_kernels:
            await self._boot(entry, pooled, kw, t0)
            return kid
        # Listed at once; the start goes on in a task of ours (ended by shutdown).
        del self._starting[kid]
        self._kernels[kid] = entry
        entry.start_task = asyncio.get_running_loop().create_task(
            self._boot(entry, pooled, kw, t0), name=f"kk-start-{kid[:8]}"
        )
        return kid

    async def _boot(
        self, entry: KernelRecord, pooled: bool, kw: Mapping[str, Any], t0: float
    ) -> None:
        """Start the kernel of ``entry`` (attached) and settle its ``ready``.

        A failure is raised, except that of a pending kernel, which stays listed
        with the error in its ``ready`` until shut down or removed (as in
        jupyter_client).
        """
        km, kid, ready = entry.km, entry.kernel_id, entry.ready
        assert km is not None
        try:
            if not entry.ending:
                if pooled:
                    self._emit(KernelEvent("started", kid, km.state, {"pool": True}))
                else:
                    await km.start_kernel(**kw)
                entry.publish()  # the session, now that the connection info exists
                entry.activity.watch(km.connection_info)  # type: ignore[arg-type]
                entry.activity.touch()
                # A pooled kernel answered kernel_info when it joined the pool and
                # its heartbeat was watched since: a new probe would only add a
                # round trip (and a client's sockets) to the hit.
                if self.wait_for_ready and not pooled:
                    await entry.ensure_ready(self.ready_timeout)
        except BaseException as e:
            if not (entry.ending and isinstance(e, Exception)):
                self.metrics.start_failures.inc(kernel_name=entry.kernel_name)
                if isinstance(e, Exception) and self._kernels.get(kid) is entry:
                    entry.start_error = e
                    await self._discard(entry, forget=False)
                    resolve(ready, e)
                    return
                await self._discard(entry)
                resolve(ready, e)
                raise
        if entry.ending:
            await self._discard(entry)
            resolve(ready, LifecycleError(f"The start of kernel {kid} was ended by a shutdown"))
            return
        if self._starting.pop(kid, None) is entry:
            self._kernels[kid] = entry
        entry.start_done.set()
        resolve(ready)
        self.metrics.starts.inc(kernel_name=entry.kernel_name)
        self.metrics.start_latency.observe(time.monotonic() - t0, kernel_name=entry.kernel_name)

    async def _discard(self, entry: KernelRecord, forget: bool = True) -> None:
        """End a start that failed or was ended: no process, no file, no task left;
        the record is forgotten unless ``forget`` is false (a failed pending kernel)."""
        km = entry.km
        if km is not None:
            with contextlib.suppress(Exception):
                await km.shutdown_kernel(now=True)
        await entry.aclose()
        if self._starting.get(entry.kernel_id) is entry:
            del self._starting[entry.kernel_id]
        if forget and self._kernels.get(entry.kernel_id) is entry:
            del self._kernels[entry.kernel_id]
        entry.start_done.set()

    # -- restarting and ending ----------------------------------------------------

    async def restart_kernel(self, kernel_id: str, now: bool = False, **kw: Any) -> None:
        """Restart the kernel on the same ports; returns once it is ready again.

        A kernel whose (pending) start is not over raises :class:`LifecycleError`.
        """
        entry = self._entry(kernel_id)
        km = self._started(kernel_id, "restart")
        ready = entry.new_ready()
        entry.restart_reasons.append("requested")
        entry.activity.reset()
        try:
            await km.restart_kernel(now=now, **kw)
            assert km.connection_info is not None
            entry.activity.follow(km.connection_info)
            if self.wait_for_ready:
                await entry.ensure_ready(self.ready_timeout)
        except BaseException as e:
            resolve(ready, e)
            raise
        resolve(ready)

    # -- closing ----------------------------------------------------------------

    async def shutdown_all(self, now: bool = False) -> None:
        """Shut every kernel down: running, still starting, and those in warm pools;
        returns when they are all gone (pending kernels too)."""
        pools = list(self._pools.values())
        self._pools.clear()
        await asyncio.gather(
            *(self.shutdown_kernel(kid, now=now) for kid in list(self._kernels)),
            *(self._end_start(e) for e in list(self._starting.values())),
            *(p.aclose() for p in pools),
            return_exceptions=True,
        )
        closing, self._closing = self._closing, []
        await asyncio.gather(*closing, return_exceptions=True)

    async def aclose(self, now: bool = True) -> None:
        """Stop the culler and end every kernel (the manager may be started again)."""
        await self._culler.aclose()
        await self.shutdown_all(now=now)

    async def __aenter__(self) -> AsyncMultiKernelManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

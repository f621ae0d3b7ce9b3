"""Where the multi-kernel manager's kernels come from: limits, a new
:class:`AsyncKernelManager`, or a warm pool.

A part of :class:`~kernelkeeper.multikernel.AsyncMultiKernelManager`; the
pools themselves are :mod:`kernelkeeper.pool`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from .activity import KernelRecord
from .errors import ConfigurationError, KernelLimitError, LifecycleError
from .manager import AsyncKernelManager
from .multikernel_compat import KernelTable
from .pool import KernelPool, PoolConfig

__all__ = ["KernelSources"]


class KernelSources(KernelTable):
    """Admission (limits) and the making or taking of a kernel's manager."""

    _starting: dict[str, KernelRecord]
    _pools: dict[str, Any]
    _pool_configs: dict[str, Any]
    _factory: Callable[..., AsyncKernelManager]
    kernel_manager_kw: dict[str, Any]
    connection_dir: str
    max_kernels: int | None
    max_kernels_per_type: dict[str, int]

    async def _fill_pools(self) -> None:
        for name, cfg in list(self._pool_configs.items()):
            pool = self._make_pool(name, cfg)
            self._pool_configs.pop(name, None)
            if pool is not None:
                self._pools[name] = pool
                await pool.start()

    def add_pool(self, kernel_name: str, pool: Any) -> None:
        """Serve starts of ``kernel_name`` from ``pool`` (a KernelPool or a pool config);
        a config is made into a pool and filled by :meth:`start` / the next start."""
        self._pool_configs[kernel_name] = pool

    def _make_pool(self, name: str, cfg: Any) -> Any:
        if hasattr(cfg, "take"):
            return cfg
        if not isinstance(cfg, PoolConfig):
            raise ConfigurationError(f"pools[{name!r}] must be a KernelPool or a PoolConfig")
        return KernelPool.from_config(name, cfg, factory=lambda: self._new_manager(name, None))

    def _check_limits(self, name: str) -> None:
        live = list(self._kernels.values()) + list(self._starting.values())
        if self.max_kernels is not None and len(live) >= self.max_kernels:
            raise KernelLimitError(f"Cannot start a kernel: max_kernels={self.max_kernels} reached")
        limit = self.max_kernels_per_type.get(name)
        if limit is not None and sum(1 for e in live if e.kernel_name == name) >= limit:
            raise KernelLimitError(
                f"Cannot start a {name!r} kernel: the limit of {limit} for that type is reached"
            )

    def _new_manager(self, name: str, kernel_id: str | None) -> AsyncKernelManager:
        kw = dict(self.kernel_manager_kw)
        if kernel_id is not None:
            kw["kernel_id"] = kernel_id
            if self.connection_dir:
                kw["connection_file"] = os.path.join(
                    self.connection_dir, f"kernel-{kernel_id}.json"
                )
        return self._factory(name, **kw)

    async def _obtain(
        self, entry: KernelRecord, kw: Mapping[str, Any], id_given: bool
    ) -> tuple[AsyncKernelManager, bool]:
        """The kernel's manager, from a pool if one can honour ``kw``.

        Unless the caller chose the id (``id_given``), a pooled kernel keeps its
        own (a uuid4 too): renaming it costs a round trip to the kernel, to tell
        it its new connection file. ``entry`` is re-keyed to it.
        """
        pool = self._pools.get(entry.kernel_name)
        if pool is not None:
            want = entry.kernel_id if id_given else None
            take_kw = {"kernel_id": want, "cwd": kw.get("cwd"), "env": kw.get("env")}
            kc = None
            if hasattr(pool, "take_with_client"):
                got = await pool.take_with_client(**take_kw)
                km, kc = got if got is not None else (None, None)
            else:  # any object with take()
                km = await pool.take(**take_kw)
            if km is not None:
                # The first client(id) without arguments gets the pooled kernel's
                # connected client; it is the record's to close until then.
                entry.spare_client = kc
                if entry.ending:  # a shutdown came while we waited on the pool
                    await entry.close_spare()
                    await km.shutdown_kernel(now=True)
                    raise LifecycleError(f"The start of kernel {entry.kernel_id} was abandoned")
                if km.kernel_id != entry.kernel_id:
                    if km.kernel_id in self._kernels or km.kernel_id in self._starting:
                        km.adopt_id(entry.kernel_id)  # (a clash of uuid4s: never, really)
                    elif self._starting.get(entry.kernel_id) is entry:
                        del self._starting[entry.kernel_id]
                        entry.kernel_id = km.kernel_id
                        self._starting[entry.kernel_id] = entry
                return km, True
        return self._new_manager(entry.kernel_name, entry.kernel_id), False

"""The filling half of a :class:`~kernelkeeper.pool.KernelPool`: starts, health, retirement.

:class:`PoolFiller` runs the pool's one background loop, which starts kernels
(at most ``max_concurrent_starts`` at once, with a back-off after failures)
until ready plus starting reach the target, retires kernels older than
``ttl``, and watches each pooled kernel's process so that one that dies is
dropped and replaced. The attributes it declares are set by
``KernelPool.__init__``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from .asyncsignal import Signal
from .errors import ConfigurationError
from .events import KernelEvent
from .manager import AsyncKernelManager
from .pool_handover import Pooled, pool_cwd, pool_env

__all__ = ["PoolConfig", "PoolFiller"]

log = logging.getLogger("kernelkeeper.pool")

_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 30.0


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """The sizing of a pool (see :mod:`kernelkeeper.pool`); values are checked."""

    min_size: int = 1
    max_size: int | None = None
    ttl: float | None = None
    max_concurrent_starts: int = 2
    refill_delay: float = 0.1

    def __post_init__(self) -> None:
        if self.min_size < 0:
            raise ConfigurationError(f"min_size={self.min_size}: must be >= 0")
        if self.max_size is not None and self.max_size < self.min_size:
            raise ConfigurationError(
                f"max_size={self.max_size}: must be >= min_size ({self.min_size})"
            )
        if self.ttl is not None and not self.ttl > 0:
            raise ConfigurationError(f"ttl={self.ttl}: must be > 0 (or None)")
        if not self.refill_delay >= 0:
            raise ConfigurationError(f"refill_delay={self.refill_delay}: must be >= 0")
        if self.max_concurrent_starts < 1:
            raise ConfigurationError(
                f"max_concurrent_starts={self.max_concurrent_starts}: must be >= 1"
            )

    @property
    def ceiling(self) -> int:
        """The most kernels the pool keeps (ready and starting)."""
        return self.min_size if self.max_size is None else self.max_size


class PoolFiller:
    """Keeps a pool filled with ready kernels (the base of ``KernelPool``)."""

    # Set by KernelPool.__init__.
    config: PoolConfig
    _factory: Callable[[], AsyncKernelManager]
    _start_kw: dict[str, Any]
    _target: int
    _ready: collections.deque[Pooled]
    _starting: dict[asyncio.Task[None], AsyncKernelManager]
    _background: set[asyncio.Task[None]]
    _wake: Signal  # the filler has work
    _changed: Signal  # size or starting changed (wait_filled)
    _failures_in_a_row: int
    _next_start: float
    started: int
    failed_starts: int
    died: int
    hung: int
    retired: int

    @property
    def size(self) -> int:
        """Kernels ready to be taken."""
        return len(self._ready)

    @property
    def starting(self) -> int:
        """Kernels being started (never more than ``max_concurrent_starts``)."""
        return len(self._starting)

    def _notify(self) -> None:
        self._changed.pulse()

    async def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            self._retire_expired()
            now = loop.time()
            while (
                self.size + self.starting < self._target
                and self.starting < self.config.max_concurrent_starts
                and now >= self._next_start
            ):
                try:
                    self._spawn_start()
                except Exception as e:  # a broken factory must not end the filler
                    self._start_failed(e)
                    break
            timeouts = []
            if self.size + self.starting < self._target and now < self._next_start:
                timeouts.append(self._next_start - now)
            if self.config.ttl is not None and self._ready:
                timeouts.append(min(e.born for e in self._ready) + self.config.ttl - now)
            timeout = max(0.0, min(timeouts)) if timeouts else None
            await self._wake.wait(timeout)

    def _spawn_start(self) -> None:
        km = self._factory()
        task = asyncio.get_running_loop().create_task(
            self._start_one(km), name=f"kk-pool-start-{km.kernel_id[:8]}"
        )
        self._starting[task] = km

    async def _start_one(self, km: AsyncKernelManager) -> None:
        loop = asyncio.get_running_loop()
        born = loop.time()
        autorestart = km.autorestart
        km.autorestart = False  # while pooled, a dead kernel is replaced, not restarted
        monitored = km.supervisor.monitor_heartbeat
        km.supervisor.monitor_heartbeat = True  # and a hung one too
        kw = self._start_kw
        env, cwd = pool_env(kw), pool_cwd(kw)
        timeout = kw.get("startup_timeout", 60.0)
        kc = None
        try:
            await km.start_kernel(**kw)
            await km.wait_ready(timeout=timeout)
            # The taker's client, connected now: its sockets and iopub
            # subscription are what a fresh client spends most of a hit on.
            kc = km.client()
            kc.start_channels(hb=False)
            await kc.wait_for_ready(timeout=timeout)
        except BaseException as e:
            with contextlib.suppress(Exception):
                if kc is not None:
                    await kc.aclose()
                await km.shutdown_kernel(now=True)
            self._start_done()
            if isinstance(e, asyncio.CancelledError):
                raise
            self._start_failed(e)
            return
        self.started += 1
        self._failures_in_a_row = 0
        entry = Pooled(km, born, cwd, env, autorestart, monitored, client=kc)
        entry.watcher = loop.create_task(
            self._watch(entry), name=f"kk-pool-watch-{km.kernel_id[:8]}"
        )
        self._ready.append(entry)
        self._start_done()

    def _start_failed(self, error: BaseException) -> None:
        self.failed_starts += 1
        self._failures_in_a_row += 1
        delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._failures_in_a_row - 1))
        self._next_start = asyncio.get_running_loop().time() + delay
        log.warning(
            "Pool %s: a kernel failed to start (%s); next try in %.1f s", self, error, delay
        )

    def _start_done(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._starting.pop(task, None)  # type: ignore[call-overload]
        self._wake.set()
        self._notify()

    async def _watch(self, entry: Pooled) -> None:
        """Until the pooled kernel dies or hangs (its supervisor pings its
        heartbeat while pooled, see ``_start_one``): then replace it."""
        km, loop = entry.km, asyncio.get_running_loop()
        hung = asyncio.Event()

        def on_event(event: KernelEvent) -> None:  # on a library thread
            if event.kind == "hung" and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(hung.set)

        km.add_event_listener(on_event)
        waits: list[asyncio.Task[Any]] = [loop.create_task(hung.wait())]
        proc = km.process
        if proc is not None:
            waits.append(loop.create_task(proc.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            km.remove_event_listener(on_event)
            for t in waits:
                t.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        # Still ours (a take or retirement cancels this first): it died or hung.
        if hung.is_set():
            log.info("Pool %s: pooled kernel %s hung; replacing it", self, km.kernel_id)
            self.hung += 1
        else:
            log.info("Pool %s: pooled kernel %s died; replacing it", self, km.kernel_id)
            self.died += 1
        self._drop(entry)
        entry.watcher = None
        self._stop(entry)

    def _drop(self, entry: Pooled) -> None:
        with contextlib.suppress(ValueError):
            self._ready.remove(entry)
        self._wake.set()
        self._notify()

    def _retire_expired(self) -> None:
        ttl = self.config.ttl
        if ttl is None:
            return
        now = asyncio.get_running_loop().time()
        for entry in [e for e in self._ready if now - e.born >= ttl]:
            self.retired += 1
            self._target = max(self.config.min_size, self._target - 1)
            self._drop(entry)
            self._stop(entry)

    def _stop(self, entry: Pooled) -> None:
        """Shut the kernel down in a task of the pool's (awaited by aclose)."""
        task = asyncio.get_running_loop().create_task(
            self._shutdown(entry), name=f"kk-pool-stop-{entry.km.kernel_id[:8]}"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shutdown(self, entry: Pooled) -> None:
        self._unwatch(entry)
        kc, entry.client = entry.client, None
        try:
            if kc is not None:
                await kc.aclose()
            await entry.km.shutdown_kernel(now=True)
        except Exception:
            log.exception("Pool %s: could not shut down kernel %s", self, entry.km.kernel_id)

    def _unwatch(self, entry: Pooled) -> None:
        """Stop watching ``entry``'s process (the task ends in the background)."""
        watcher, entry.watcher = entry.watcher, None
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            self._background.add(watcher)
            watcher.add_done_callback(self._background.discard)

"""Warm kernel pools: kernels started ahead of time and handed out ready.

A :class:`KernelPool` keeps ``min_size`` kernels of one kernel type started
and ready (``wait_ready`` done) in the background. :meth:`KernelPool.take`
hands one out in well under a millisecond; the caller's
``wait_for_ready`` is then one round trip. The pool refills itself after
every take, ``refill_delay`` seconds later (default 0.1 s, so that the
refill's CPU-heavy start does not slow the caller's first requests to the
kernel it just got), never starting more than ``max_concurrent_starts``
kernels at once.

Sizing. The pool aims at a *target* that starts at ``min_size``. A take
that finds the pool empty (a miss through lack of kernels, not a bypass)
raises the target by one, up to ``max_size`` (``None``: the target never
grows past ``min_size``). A kernel retired by ``ttl`` without having been
taken lowers it again by one, down to ``min_size``. A start that fails is
retried after a back-off (0.5 s doubling to 30 s) so a broken kernelspec
does not spin.

Health. Each pooled kernel's process exit is awaited (the manager follows
it through a pidfd): a pooled kernel that dies is dropped, its files are
removed, and a replacement is started. A kernel older than ``ttl`` seconds
(counted from its start) is retired and replaced; ``take`` never hands out
one that has expired. While pooled, a kernel's ``autorestart`` is off (the
pool replaces it instead); the factory's setting is restored on take.
While pooled, a kernel's heartbeat is pinged by its supervisor (every
``heartbeat_interval`` of its manager, a few microseconds each): one that
misses ``heartbeat_misses`` in a row (frozen, SIGSTOPped) is replaced too
(counted in ``hung``), and the factory's ``monitor_heartbeat`` is restored
on take.

Each pooled kernel also keeps one connected client (every channel but the
heartbeat's, subscription proven by ``wait_for_ready``).
:meth:`KernelPool.take_with_client` hands it out with the kernel, its queues
emptied, so the taker's ``wait_for_ready`` is one round trip on open
sockets; :meth:`KernelPool.take` closes it. The multi-kernel manager gives
it to the first ``client(kernel_id)`` call without arguments after a hit.

What a take honours (the contract with the caller):

* ``kernel_id``: the kernel takes that id. Pooled kernels are started
  under a fresh uuid4 of their own, so without ``kernel_id`` that uuid is
  the kernel's id, exactly as a fresh start would pick one. With
  ``kernel_id``, ``km.kernel_id`` changes and the connection file is
  renamed (hard link, then unlink: no clobbering) to ``kernel-<id>.json``
  when it had the default name; the process manager's cleanup list follows.
  In a Python kernel the kernel's own idea of its connection file
  (``ipykernel.get_connection_file()``) and the launcher's watchdog list
  (which removes the file if this process dies) are updated in the same
  silent execute as ``cwd``. If ``kernel-<id>.json`` already exists the
  request bypasses the pool.
* ``cwd``: a pooled kernel was started in the pool's working directory
  (``start_kw["cwd"]``, or this process's one when it was started). A
  request for the same directory (compared after resolving symlinks)
  costs nothing. A different one is applied in a Python kernel
  (kernelspec language ``python``) by a silent, history-less execute of
  ``os.chdir(cwd)`` in a private namespace (the user namespace gains no
  names and the execution count does not move), verified in the reply with
  ``os.path.samefile('.', cwd)``; IPython's directory history ``_dh`` is
  reset to it. For ipykernel ``sys.path[0]`` is ``''``, so imports follow
  the new directory as they would after a fresh start; anything a kernel
  (or a startup file) computed from its cwd at startup is not redone. A
  non-Python kernel, or a ``cwd`` that is not a directory, bypasses the
  pool (the caller's fresh start then reports the error).
* ``env``: environment variables are read at import time by many
  libraries, so they are never patched into a running kernel. ``env=None``
  accepts the pool's environment (``start_kw["env"]``, or this process's
  ``os.environ`` as it was when the kernel started). An ``env`` mapping is
  honoured only if it equals that environment exactly; otherwise the
  request bypasses the pool.

A bypass returns ``None`` and counts as a miss (and in ``bypasses``); so
does a take from an empty or closed pool, or a hand-over that fails (that
kernel is shut down). After ``None`` the caller starts a fresh kernel.

Events. A pooled kernel's ``started`` and state events were emitted while it
was in the pool, to nobody: listeners added after :meth:`take` see events
from then on. The kernel is ``idle`` when handed out; ``km.process.pid`` is
its process. A caller that reports starts should report a pool hit itself.

Cleanup. :meth:`KernelPool.aclose` kills every pooled kernel and every
kernel still starting and awaits all of the pool's tasks. Pooled kernels
are ordinary managed kernels, so if this process dies, even by SIGKILL,
they die with it and the launcher removes their connection files.
``start_kw["independent"]`` is refused for that reason. (For kernels that
are not ipykernel the guard only knows the connection file's first name: a
file renamed by a ``kernel_id`` take can survive a SIGKILL of this process.)

Metrics: ``hits``, ``misses``, ``bypasses``, ``started``, ``failed_starts``,
``died``, ``hung``, ``retired`` and ``take_times`` (seconds each recent successful
take took, newest last).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .asyncsignal import Signal
from .client import AsyncKernelClient
from .errors import ConfigurationError, KernelError, KernelTimeoutError, LifecycleError
from .manager import AsyncKernelManager
from .pool_fill import PoolConfig, PoolFiller
from .pool_handover import Pooled, hand_over, plan_take

__all__ = ["KernelPool", "PoolConfig"]

log = logging.getLogger("kernelkeeper.pool")

_START_KEYS = frozenset(
    {"cwd", "env", "extra_arguments", "fork_server", "stdout", "stderr", "startup_timeout"}
)
_TAKE_TIMES_KEPT = 1000


class KernelPool(PoolFiller):
    """Warm, ready kernels of one kernel type (see :mod:`kernelkeeper.pool`).

    :param kernel_name: the kernel type every pooled kernel is started as.
    :param factory: makes each pooled kernel's (unstarted) manager; default
        ``AsyncKernelManager(kernel_name)``.
    :param start_kw: keyword arguments for ``start_kernel`` (``cwd``, ``env``,
        ``extra_arguments``, ``stdout``, ``stderr``, ``startup_timeout``).

    Use it from one event loop; :meth:`start` it, :meth:`aclose` it.
    """

    def __init__(
        self,
        kernel_name: str,
        *,
        min_size: int = 1,
        max_size: int | None = None,
        ttl: float | None = None,
        max_concurrent_starts: int = 2,
        factory: Callable[[], AsyncKernelManager] | None = None,
        start_kw: Mapping[str, Any] | None = None,
        refill_delay: float = 0.1,
    ) -> None:
        self.config = PoolConfig(min_size, max_size, ttl, max_concurrent_starts, refill_delay)
        self.kernel_name = kernel_name
        self._factory = factory or (lambda: AsyncKernelManager(kernel_name))
        kw = dict(start_kw or {})
        if kw.get("independent"):
            raise ConfigurationError("start_kw independent=True: pooled kernels must not leak")
        kw.pop("independent", None)
        unknown = set(kw) - _START_KEYS
        if unknown:
            raise ConfigurationError(f"start_kw: unknown arguments {sorted(unknown)}")
        self._start_kw = kw
        self._target = self.config.min_size
        self._ready: collections.deque[Pooled] = collections.deque()
        self._starting: dict[asyncio.Task[None], AsyncKernelManager] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._filler: asyncio.Task[None] | None = None
        self._wake = Signal()  # the filler has work
        self._changed = Signal()  # size or starting changed (wait_filled)
        self._closed = False
        self._failures_in_a_row = 0
        self._next_start = 0.0
        self.hits = 0
        self.misses = 0
        self.bypasses = 0
        self.started = 0
        self.failed_starts = 0
        self.died = 0
        self.hung = 0
        self.retired = 0
        self.take_times: collections.deque[float] = collections.deque(maxlen=_TAKE_TIMES_KEPT)

    @classmethod
    def from_config(
        cls,
        kernel_name: str,
        config: PoolConfig,
        *,
        factory: Callable[[], AsyncKernelManager] | None = None,
        start_kw: Mapping[str, Any] | None = None,
    ) -> KernelPool:
        """A pool sized by ``config``."""
        return cls(
            kernel_name,
            min_size=config.min_size,
            max_size=config.max_size,
            ttl=config.ttl,
            max_concurrent_starts=config.max_concurrent_starts,
            refill_delay=config.refill_delay,
            factory=factory,
            start_kw=start_kw,
        )

    def __repr__(self) -> str:
        return (
            f"<KernelPool {self.kernel_name or 'python3'} ready={self.size} "
            f"starting={self.starting} target={self.target}>"
        )

    # -- state ----------------------------------------------------------------

    @property
    def target(self) -> int:
        """How many ready kernels the pool currently aims at."""
        return self._target

    @property
    def closed(self) -> bool:
        return self._closed

    def pids(self) -> list[int]:
        """Process ids of the ready kernels (oldest first)."""
        return [e.km.process.pid for e in self._ready if e.km.process is not None]

    async def wait_filled(self, timeout: float | None = 60.0) -> None:
        """Wait until ``size`` reaches the target and nothing is starting.

        Raises :class:`KernelTimeoutError` after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not (self.size >= self._target and not self._starting) and not self._closed:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise KernelTimeoutError(f"{self!r} not filled within {timeout} s")
            await self._changed.wait(remaining)

    # -- running --------------------------------------------------------------

    async def start(self) -> None:
        """Begin filling the pool in the background."""
        if self._closed:
            raise LifecycleError(f"{self!r} is closed")
        if self._filler is None:
            self._filler = asyncio.get_running_loop().create_task(
                self._fill(), name=f"kk-pool-{self.kernel_name}"
            )

    async def aclose(self) -> None:
        """Kill every pooled and every starting kernel; await all of the pool's tasks."""
        self._closed = True
        filler, self._filler = self._filler, None
        if filler is not None:
            filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await filler
        starts = list(self._starting)
        for task in starts:
            task.cancel()
        # Each start task kills its own kernel on the way out.
        await asyncio.gather(*starts, return_exceptions=True)
        self._starting.clear()  # a task cancelled before it ran never removed itself
        while self._ready:
            self._stop(self._ready.popleft())
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        self._notify()

    # -- taking ---------------------------------------------------------------

    async def take(
        self,
        *,
        kernel_id: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> AsyncKernelManager | None:
        """A started, ready kernel honouring the request, or None (start one yourself).

        See :mod:`kernelkeeper.pool` for how ``kernel_id``, ``cwd`` and ``env``
        are applied and when a request bypasses the pool.
        """
        got = await self.take_with_client(kernel_id=kernel_id, cwd=cwd, env=env)
        if got is None:
            return None
        km, kc = got
        if kc is not None:
            await kc.aclose()
        return km

    async def take_with_client(
        self,
        *,
        kernel_id: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> tuple[AsyncKernelManager, AsyncKernelClient | None] | None:
        """:meth:`take`, with the pooled kernel's connected client (channels
        running but the heartbeat's, queues empty), now the caller's to close."""
        t0 = time.perf_counter()
        if self._closed:
            self.misses += 1
            return None
        entry = self._pick()
        plan = plan_take(entry, self._start_kw, kernel_id, cwd, env)
        if isinstance(plan, str):
            log.debug("Pool %s: request bypasses the pool: %s", self, plan)
            self.misses += 1
            self.bypasses += 1
            return None
        if entry is None:
            self.misses += 1
            if self._target < self.config.ceiling:
                self._target += 1  # demand outran the pool: keep one more warm
            self._wake.set()
            return None
        cwd, new_cf, tell_kernel = plan
        km = entry.km
        # Ours now: nothing below hands it back to the pool.
        self._ready.remove(entry)
        self._unwatch(entry)
        # The refill waits a moment: a start's CPU-heavy first second would
        # otherwise compete with the caller's first requests to this kernel.
        loop = asyncio.get_running_loop()
        self._next_start = max(self._next_start, loop.time() + self.config.refill_delay)
        self._wake.set()
        self._notify()
        try:
            if kernel_id is not None and kernel_id != km.kernel_id:
                km.adopt_id(kernel_id, new_cf)
            if cwd is not None or tell_kernel:
                await hand_over(km, cwd, new_cf, entry.client)
            if cwd is not None:
                # A restart relaunches with the start's arguments: after a take
                # with cwd the kernel must restart there, as a fresh one would.
                km.set_launch_args(cwd=cwd)
        except (KernelError, OSError) as e:
            log.warning("Pool %s: hand-over of %s failed (%s)", self, km.kernel_id, e)
            self.misses += 1
            await self._shutdown(entry)
            return None
        km.autorestart = entry.autorestart
        km.supervisor.monitor_heartbeat = entry.monitor_heartbeat
        kc, entry.client = entry.client, None
        if kc is not None:
            for ch in (kc.shell_channel, kc.iopub_channel, kc.stdin_channel, kc.control_channel):
                await ch.get_msgs()  # nothing from its time in the pool reaches the caller
            if kc.manager is not None:
                # Proven ready when it was pooled, watched by heartbeat since:
                # the taker's wait_for_ready needs no new round trip.
                kc.ready_proof = kc.manager.generation
        self.hits += 1
        self.take_times.append(time.perf_counter() - t0)
        return km, kc

    def _pick(self) -> Pooled | None:
        """The oldest ready kernel that is alive and not expired (others are retired)."""
        ttl = self.config.ttl
        now = asyncio.get_running_loop().time()
        for entry in list(self._ready):
            proc = entry.km.process
            if proc is not None and proc.exit_code is None:
                if ttl is None or now - entry.born < ttl:
                    return entry
            self._wake.set()  # the filler retires it (ttl) or its watcher drops it (dead)
        return None

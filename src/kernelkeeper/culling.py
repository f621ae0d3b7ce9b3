"""Culling idle kernels: a frozen policy, a pure decision, and the periodic task.

:class:`CullPolicy` says when a kernel may be ended; :func:`cull_reason`
applies it to what is known of one kernel (no I/O); :class:`Culler` is the
task, owned by the multi-kernel manager, that checks every ``interval``
seconds and asks the manager to cull.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["CullPolicy", "Culler", "KernelActivityView", "cull_reason"]

log = logging.getLogger("kernelkeeper.culling")


@dataclasses.dataclass(frozen=True)
class CullPolicy:
    """When an idle kernel is ended.

    :param idle_timeout: seconds without iopub activity after which a kernel
        is culled; ``None`` or 0 never culls.
    :param interval: seconds between checks.
    :param cull_busy: also cull a kernel that has been busy that long.
    :param cull_connected: also cull a kernel with connected clients.
    :param retention: seconds a culled kernel's model stays available
        (``execution_state: dead`` with the reason); ``None`` keeps it until
        ``remove_kernel``.
    :param overrides: a policy per kernel type (its ``interval`` and
        ``retention`` are not used: the manager's policy sets those).
    """

    idle_timeout: float | None = None
    interval: float = 60.0
    cull_busy: bool = False
    cull_connected: bool = False
    retention: float | None = 3600.0
    overrides: Mapping[str, CullPolicy] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"CullPolicy.interval must be > 0, got {self.interval}")
        if self.idle_timeout is not None and self.idle_timeout < 0:
            raise ValueError(f"CullPolicy.idle_timeout must be >= 0, got {self.idle_timeout}")

    def for_kernel(self, kernel_name: str) -> CullPolicy:
        """The policy that applies to kernels of type ``kernel_name``."""
        return self.overrides.get(kernel_name, self)

    @property
    def enabled(self) -> bool:
        """Could any kernel ever be culled under this policy?"""
        return bool(self.idle_timeout) or any(p.enabled for p in self.overrides.values())


@dataclasses.dataclass(frozen=True)
class KernelActivityView:
    """What the culler needs to know of one kernel."""

    kernel_id: str
    kernel_name: str
    execution_state: str
    last_activity: float  # time.time() of the last iopub message (or the start)
    connections: int


def cull_reason(policy: CullPolicy, k: KernelActivityView, now: float) -> str | None:
    """Why ``k`` should be culled now under ``policy`` (its type's override), or None."""
    p = policy.for_kernel(k.kernel_name)
    if not p.idle_timeout:
        return None
    if k.execution_state not in ("idle", "busy"):
        return None  # starting, restarting, dead: not ours to judge
    if k.execution_state == "busy" and not p.cull_busy:
        return None
    if k.connections > 0 and not p.cull_connected:
        return None
    idle_for = now - k.last_activity
    if idle_for < p.idle_timeout:
        return None
    what = "busy" if k.execution_state == "busy" else "idle"
    return f"culled: {what} for {int(idle_for)} s"


class Culler:
    """Every ``policy.interval`` seconds: cull what the policy says, forget old tombstones.

    ``snapshot()`` lists the kernels; ``cull(kernel_id, reason)`` ends one;
    ``expire(now)`` forgets culled kernels past their retention.
    """

    def __init__(
        self,
        policy: CullPolicy,
        snapshot: Callable[[], list[KernelActivityView]],
        cull: Callable[[str, str], Awaitable[Any]],
        expire: Callable[[float], None],
    ) -> None:
        self.policy = policy
        self._snapshot = snapshot
        self._cull = cull
        self._expire = expire
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the periodic task on the running loop (again after :meth:`aclose`)."""
        if self.running:
            return
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kk-culler")

    def check_now(self) -> None:
        """Run a check at once instead of at the next interval."""
        if self._wake is not None:
            self._wake.set()

    async def aclose(self) -> None:
        """Cancel the task and wait for it (a cull in progress is cancelled too)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # Re-raise if *we* are being cancelled, not just the culler.
                me = asyncio.current_task()
                cancelling = getattr(me, "cancelling", None)  # 3.11+
                if cancelling is not None and cancelling():
                    raise

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                # A timer, not an ordering sleep: wake on the interval or on check_now().
                await asyncio.wait_for(self._wake.wait(), self.policy.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.run_once()
            except Exception:  # the culler must survive a failed check
                log.exception("Culling check failed")

    async def run_once(self) -> list[str]:
        """One check: cull what is due (concurrently); returns the culled ids."""
        now = time.time()
        self._expire(now)
        due = [
            (k.kernel_id, reason)
            for k in self._snapshot()
            if (reason := cull_reason(self.policy, k, now)) is not None
        ]
        if not due:
            return []
        results = await asyncio.gather(
            *(self._cull(kid, reason) for kid, reason in due), return_exceptions=True
        )
        culled = []
        for (kid, _), r in zip(due, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("Culling kernel %s failed: %s", kid, r)
            else:
                culled.append(kid)
        return culled

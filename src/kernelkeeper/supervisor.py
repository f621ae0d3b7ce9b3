"""One task per running kernel: it follows the process's exit and heartbeat.

The lifecycle manager owns one :class:`Supervisor` per kernel and calls
:meth:`Supervisor.watch` after each launch. The supervisor's task awaits the
process's exit (an event: the process manager's pidfd) and, while heartbeat
monitoring is on, a :class:`HeartbeatMonitor` pinging the kernel on a REQ
socket of its own. On a failure it asks the pure
:class:`~kernelkeeper.policy.RestartTracker` what to do, and acts through
:class:`KernelHooks`: callables the manager hands it. The supervisor never
sees the manager itself (manager → supervisor → policy; nothing imports
back up).

Events it has the manager emit, each with the failure's fields in ``detail``
(``reason``, ``pid``, ``exit_code``, ``signal``, ``stderr_tail``,
``missed_heartbeats``, ``uptime``, ``detected_after``, see
:class:`~kernelkeeper.policy.Failure`): ``died``, ``hung``, ``restarting``
and ``restarted`` (with ``auto=True``, ``attempt`` and ``restart_limit``),
``dead`` (given up, with ``why``). Restart callbacks (``restart``, ``dead``)
run off the loop, in order with those events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .connection import ConnectionInfo
from .errors import ConfigurationError, KernelStartError, KernelTimeoutError, LifecycleError
from .heartbeat import HeartbeatMonitor
from .policy import Action, Decision, Failure, RestartPolicy, RestartTracker
from .subproc import KernelManager as ProcessManager

__all__ = ["EVENTS", "HeartbeatMonitor", "KernelHooks", "RestartOptions", "Supervisor"]

log = logging.getLogger("kernelkeeper.supervisor")

#: The events restart callbacks can be registered for.
EVENTS = ("restart", "dead")


@dataclasses.dataclass(frozen=True)
class KernelHooks:
    """What a supervisor may see and do of the kernel it watches.

    ``restart(proc, detail)`` replaces ``proc`` (None: no process is left, a
    restart died while starting) by a new process, killing it first if it still
    runs; it emits ``restarting`` and ``restarted`` and raises
    :class:`LifecycleError` when a shutdown or restart asked for took over.
    ``give_up(proc, detail)`` kills what is left, marks the kernel dead and
    emits ``dead``; it returns False when someone else took over.
    """

    kernel_id: Callable[[], str]
    process: Callable[[], ProcessManager | None]
    connection: Callable[[], ConnectionInfo | None]
    stopping: Callable[[], bool]  # a shutdown or restart asked for is under way
    emit: Callable[..., None]  # emit(kind, **detail): a lifecycle event
    deliver: Callable[[Callable[[], Any]], None]  # a user callback, off the loop, in order
    died: Callable[[Mapping[str, Any]], None]  # the process exited on its own
    restart: Callable[[ProcessManager | None, Mapping[str, Any]], Awaitable[None]]
    give_up: Callable[[ProcessManager | None, Mapping[str, Any]], Awaitable[bool]]


class Supervisor:
    """Watches one kernel's current process; restarts it as its policy says.

    :param hooks: the manager's side (see :class:`KernelHooks`).
    :param policy: the restart rules.
    :param heartbeat_interval: seconds between heartbeat pings (and each ping's deadline).
    :param heartbeat_misses: pings missed in a row that make the kernel hung.
    :param monitor_heartbeat: ping even when no automatic restart is on (to get
        ``hung`` events); with ``restart_on_death`` or ``restart_on_hang`` it is on anyway.
    """

    def __init__(
        self,
        hooks: KernelHooks,
        policy: RestartPolicy,
        *,
        heartbeat_interval: float = 3.0,
        heartbeat_misses: int = 4,
        monitor_heartbeat: bool = False,
    ) -> None:
        if not heartbeat_interval > 0:
            raise ConfigurationError(f"heartbeat_interval={heartbeat_interval}: must be > 0")
        if heartbeat_misses < 1:
            raise ConfigurationError(f"heartbeat_misses={heartbeat_misses}: must be >= 1")
        self.hooks = hooks
        self.tracker = RestartTracker(policy)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_misses = heartbeat_misses
        self._monitor_heartbeat = monitor_heartbeat
        self.callbacks: dict[str, list[Callable[[], Any]]] = {e: [] for e in EVENTS}
        self._task: asyncio.Task[None] | None = None
        self._restarting = False  # our task is inside hooks.restart()
        self._wake: asyncio.Event | None = None  # heartbeat settings changed
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- configuration ----------------------------------------------------------

    @property
    def policy(self) -> RestartPolicy:
        return self.tracker.policy

    @policy.setter
    def policy(self, policy: RestartPolicy) -> None:
        self.tracker.policy = policy
        self._changed()

    @property
    def monitor_heartbeat(self) -> bool:
        return self._monitor_heartbeat

    @monitor_heartbeat.setter
    def monitor_heartbeat(self, value: bool) -> None:
        self._monitor_heartbeat = value
        self._changed()

    @property
    def heartbeat_monitored(self) -> bool:
        """Is the heartbeat pinged (only when someone acts on a hang)?"""
        p = self.policy
        return self._monitor_heartbeat or p.restart_on_death or p.restart_on_hang

    def _changed(self) -> None:
        # The blocking face sets options from the caller's thread, not the loop's.
        wake, loop = self._wake, self._loop
        if wake is None or loop is None or loop.is_closed():
            return
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    # -- restart callbacks ------------------------------------------------------

    def add_callback(self, f: Callable[[], Any], event: str = "restart") -> None:
        if event not in self.callbacks:
            raise ConfigurationError(f"Unknown restart event {event!r}; expected one of {EVENTS}")
        self.callbacks[event].append(f)

    def remove_callback(self, f: Callable[[], Any], event: str = "restart") -> None:
        with contextlib.suppress(ValueError, KeyError):
            self.callbacks[event].remove(f)

    def _fire(self, event: str) -> None:
        for f in list(self.callbacks[event]):
            self.hooks.deliver(f)

    # -- the task ---------------------------------------------------------------

    def watch(self) -> None:
        """Supervise the kernel's current process, which has just started."""
        self.tracker.started()
        if self._restarting:
            return  # our own task is restarting the kernel and goes on to watch it
        self.stop()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"kk-supervisor-{self.hooks.kernel_id()[:8]}"
        )

    def reset(self) -> None:
        """Forget the restart history (a start asked for by the user)."""
        self.tracker.reset()

    def stop(self) -> None:
        """Cancel the task (not from within it); :meth:`aclose` also awaits it."""
        task = self._task
        if task is not None and task is not asyncio.current_task():
            self._task = None
            task.cancel()

    async def aclose(self) -> None:
        """Stop supervising and wait until the task has finished.

        From within the task (an automatic restart stops the old process) this
        does nothing: the task carries on with the new process.
        """
        task = self._task
        if task is None or task is asyncio.current_task():
            return
        self.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        self._wake, self._loop = asyncio.Event(), asyncio.get_running_loop()
        try:
            proc = self.hooks.process()
            while proc is not None:
                failure = await self._watch_one(proc)
                if failure is None:
                    return  # stopped on purpose
                await self._handle(proc, failure)
                # After a restart (ours, or one that took over) watch the new process.
                new = self.hooks.process()
                if new is None or new is proc or new.exit_code is not None:
                    return
                proc = new
        except Exception:
            log.exception("Supervisor of kernel %s failed", self.hooks.kernel_id())
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _watch_one(self, proc: ProcessManager) -> Failure | None:
        """Wait until ``proc`` dies or hangs (the failure), or is stopped on purpose (None)."""
        loop = asyncio.get_running_loop()
        exited = loop.create_task(proc.wait(), name="kk-supervisor-exit")
        tasks: set[asyncio.Task[Any]] = {exited}
        info = self.hooks.connection()
        hb: asyncio.Task[Failure] | None = None
        if info is not None:
            hb = loop.create_task(self._heartbeat(proc, info), name="kk-supervisor-hb")
            tasks.add(hb)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        if proc.exit_code is not None:
            if self.hooks.stopping():
                return None
            return Failure(
                "died",
                pid=proc.pid,
                exit_code=proc.exit_code,
                stderr_tail=proc.stderr_tail(),
                uptime=self.tracker.uptime(),
            )
        assert hb is not None and hb.done()
        return hb.result()

    async def _heartbeat(self, proc: ProcessManager, info: ConnectionInfo) -> Failure:
        """Returns a hang the policy acts on; reports (``hung``) every hang it sees."""
        assert self._wake is not None
        monitor = HeartbeatMonitor(info, self.heartbeat_interval, self.heartbeat_misses)
        while True:
            if not self.heartbeat_monitored:
                self._wake.clear()
                await self._wake.wait()
                continue
            found = await monitor.next_hang(lambda: self.heartbeat_monitored)
            if found is None or self.hooks.stopping() or proc.exit_code is not None:
                continue
            missed, silent = found
            failure = Failure(
                "hung",
                pid=proc.pid,
                missed_heartbeats=missed,
                uptime=self.tracker.uptime(),
                detected_after=silent,
            )
            log.warning(
                "Kernel %s missed %d heartbeats (silent for %.1f s)",
                self.hooks.kernel_id(),
                missed,
                silent,
            )
            self.hooks.emit("hung", **failure.detail(), heartbeat_interval=self.heartbeat_interval)
            if self.policy.restart_on_hang:
                return failure

    async def _handle(self, proc: ProcessManager, failure: Failure) -> None:
        if failure.kind == "died":
            self.hooks.died(failure.detail())
        decision = self.tracker.decide(failure.kind)
        kind = failure.kind
        target: ProcessManager | None = proc
        while decision.action is Action.RESTART:
            log.warning(
                "Kernel %s %s (exit code %s); restarting (%d/%d)",
                self.hooks.kernel_id(),
                failure.kind,
                failure.exit_code,
                decision.attempt,
                decision.limit,
            )
            self._fire("restart")
            self.tracker.started()
            self._restarting = True
            try:
                await self.hooks.restart(target, _detail(failure, decision))
                return
            except LifecycleError:
                return  # a shutdown or restart asked for took over: not a failure
            except (KernelStartError, KernelTimeoutError) as e:
                # The new process died or hung while starting; that counts too.
                failure = Failure(
                    "died",
                    exit_code=getattr(e, "exit_code", None),
                    stderr_tail=getattr(e, "stderr_tail", ""),
                    uptime=self.tracker.uptime(),
                    during_restart=True,
                )
                self.hooks.emit("died", **failure.detail(), error=str(e))
                target = None
                decision = self.tracker.decide(kind, started=False)
            except Exception as e:
                log.exception("Automatic restart of kernel %s failed", self.hooks.kernel_id())
                decision = Decision(Action.GIVE_UP, decision.attempt, decision.limit, repr(e))
            finally:
                self._restarting = False
        if decision.action is Action.GIVE_UP:
            log.warning("Kernel %s: %s; giving up", self.hooks.kernel_id(), decision.why)
            if await self.hooks.give_up(target, _detail(failure, decision)):
                self._fire("dead")


def _detail(failure: Failure, decision: Decision) -> dict[str, Any]:
    return {
        **failure.detail(),
        "auto": True,
        "attempt": decision.attempt,
        "restart_limit": decision.limit,
        "why": decision.why,
    }


class RestartOptions:
    """The automatic-restart face of a lifecycle manager, kept by its :class:`Supervisor`."""

    supervisor: Supervisor

    @property
    def autorestart(self) -> bool:
        """Is a kernel that dies on its own restarted?"""
        return self.supervisor.policy.restart_on_death

    @autorestart.setter
    def autorestart(self, value: bool) -> None:
        self.supervisor.policy = self.supervisor.policy.replace(restart_on_death=value)

    @property
    def restart_on_hang(self) -> bool:
        """Is a kernel whose heartbeat stopped killed and restarted?"""
        return self.supervisor.policy.restart_on_hang

    @restart_on_hang.setter
    def restart_on_hang(self, value: bool) -> None:
        self.supervisor.policy = self.supervisor.policy.replace(restart_on_hang=value)

    def add_restart_callback(self, callback: Callable[[], Any], event: str = "restart") -> None:
        """Register a callback to be called when the kernel is restarted automatically
        (``event="restart"``) or has died for good (``event="dead"``).

        Like listeners, callbacks run on a library thread, never on the loop.
        """
        self.supervisor.add_callback(callback, event)

    def remove_restart_callback(self, callback: Callable[[], Any], event: str = "restart") -> None:
        """Unregister a restart callback."""
        self.supervisor.remove_callback(callback, event)

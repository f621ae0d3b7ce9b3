"""Stopping one managed kernel: shutdown (asked for, then escalated) and cleanup.

:class:`KernelStopping` is the lowest part of
:class:`~kernelkeeper.AsyncKernelManager`: the event loop the kernel belongs
to, the control client, and everything that ends a process. The process's
exit is awaited as an event with a deadline; nothing sleeps a fixed time.
The attributes it declares are set by ``AsyncKernelManager.__init__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from . import connection as _conn
from .attach import ForeignProcess
from .client import AsyncKernelClient
from .connection import ConnectionInfo
from .errors import LifecycleError
from .events import KernelEvents
from .manager_state import JupyterState, ShutdownStatus
from .procview import CurrentProcess
from .states import KernelState
from .subproc import KernelManager as ProcessManager
from .supervisor import RestartOptions, Supervisor

__all__ = ["KernelStopping"]

log = logging.getLogger("kernelkeeper.manager")

S = KernelState


def _can_kill(proc: ProcessManager) -> bool:
    # A kernel we attached to without its pid (or another user's) takes no signal.
    return not isinstance(proc, ForeignProcess) or proc.can_signal


class KernelStopping(KernelEvents, RestartOptions, JupyterState):
    """Loop ownership, the control client, shutdown and cleanup of one kernel."""

    kernel_id: str
    connection_info: ConnectionInfo | None
    shutdown_wait_time: float
    supervisor: Supervisor
    _connection_file: str | None
    _proc: ProcessManager | None
    _current: CurrentProcess
    _control: AsyncKernelClient | None
    _lock: asyncio.Lock | None
    _launch_task: asyncio.Task[None] | None
    _stopping: bool
    _shutdowns_waiting: int
    _files_foreign: bool

    @property
    def connection_file(self) -> str:
        """Path of the connection file (where it will be, before the start)."""
        if self._connection_file is None:
            self._connection_file = _conn.connection_file_path(self.kernel_id)
        return self._connection_file

    @connection_file.setter
    def connection_file(self, value: str) -> None:
        self._connection_file = value

    # -- the loop the kernel belongs to ---------------------------------------

    def _get_lock(self) -> asyncio.Lock:
        self._check_loop()
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _check_loop(self) -> None:
        """A running kernel is watched from the loop that started it; say so plainly
        instead of failing obscurely when another loop drives the manager. Once
        that loop is closed, the current loop takes over."""
        loop = asyncio.get_running_loop()
        old = self._loop
        if loop is old:
            return
        if self._proc is not None and old is not None and not old.is_closed():
            raise LifecycleError(
                f"{self!r} belongs to the event loop that started its kernel; call it "
                "from that loop (or use the blocking kernelkeeper.KernelManager, which "
                "works from any thread or loop)"
            )
        self._loop, self._lock = loop, None
        if old is not None and old.is_closed():
            self._adopt_after_closed_loop()

    def _adopt_after_closed_loop(self) -> None:
        # Everything bound to the closed loop is dead: its tasks were cancelled
        # by asyncio.run(), its sockets' readers dropped. Forget them; the
        # process manager re-registers the process itself on first use.
        control, self._control = self._control, None
        if control is not None:
            with contextlib.suppress(RuntimeError):
                control.stop_channels()
        self._launch_task = None
        self.supervisor.stop()
        if self._proc is not None and self._proc.exit_code is None:
            self.supervisor.watch()

    # -- the control client ---------------------------------------------------

    def _control_client(self) -> AsyncKernelClient:
        if self._control is None:
            assert self.connection_info is not None
            # interrupt_mode="message": this client only ever sends messages. With the
            # default ("signal") its interrupt() would call back into interrupt_kernel().
            self._control = AsyncKernelClient(
                self.connection_info, manager=self._current, interrupt_mode="message"
            )
            self._control.start_channels(shell=False, iopub=False, stdin=False, hb=False)
        return self._control

    async def _close_control(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            await control.aclose()

    # -- shutdown -------------------------------------------------------------

    async def request_shutdown(self, restart: bool = False) -> None:
        """Send a shutdown_request on the control channel (does not wait).

        The state becomes ``shutting_down`` (``restarting`` with ``restart``);
        :meth:`finish_shutdown` and :meth:`cleanup_resources` complete it.
        Without a kernel this does nothing.
        """
        self._check_loop()
        if self._proc is None or self.connection_info is None:
            return
        self._stopping = True
        self._enter_stop(restart)
        self.shutdown_status = ShutdownStatus.ShutdownRequest
        await self._control_client().shutdown(restart=restart)
        await self._delivered()

    async def finish_shutdown(
        self, waittime: float | None = None, pollinterval: float = 0.1, restart: bool = False
    ) -> None:
        """Wait for the kernel to exit after a shutdown request; escalate if it does not.

        ``waittime`` (default ``shutdown_wait_time``) bounds the whole wait, as
        in jupyter_client: after half of it the group gets SIGTERM, after the
        other half SIGKILL. The process's exit is awaited as an event;
        ``pollinterval`` is accepted for compatibility and not used. A kernel
        we attached to and may not signal is only waited for.
        """
        self._check_loop()
        proc = self._proc
        if proc is None:
            return
        self._stopping = True
        half = max(self.shutdown_wait_time if waittime is None else waittime, 0.0) / 2
        if await proc.wait(timeout=half):
            if not _can_kill(proc):
                log.warning(
                    "Attached kernel %s did not exit after shutdown_request, and cannot be "
                    "signalled (pid unknown or not ours)",
                    self.kernel_id,
                )
                return
            log.info(
                "Kernel %s did not exit after shutdown_request; sending SIGTERM", self.kernel_id
            )
            self.shutdown_status = ShutdownStatus.SigtermRequest
            await proc.signal(signal.SIGTERM)
            if await proc.wait(timeout=half):
                log.warning("Kernel %s ignored SIGTERM; killing it", self.kernel_id)
                self.shutdown_status = ShutdownStatus.SigkillRequest
                await proc.kill()

    async def _stop_process(self, *, now: bool, restart: bool) -> None:
        proc = self._proc
        self._stopping = True
        await self.supervisor.aclose()
        if proc is None:
            return
        if await proc.is_alive():
            if now and _can_kill(proc):
                await proc.kill()
            else:
                try:
                    await self.request_shutdown(restart=restart)
                except Exception as e:  # a dead control channel must not stop the shutdown
                    log.warning("shutdown_request failed: %s", e)
                await self.finish_shutdown(restart=restart)
        await self._close_control()
        if restart:
            proc.files_to_cleanup = [p for p in proc.files_to_cleanup if p != self.connection_file]
        await proc.cleanup()
        self._proc = None
        self._current.process_changed()

    def _enter_stop(self, restart: bool) -> None:
        if restart:
            self._set_state(S.RESTARTING, "restart")
        else:
            self._set_state(S.SHUTTING_DOWN, "shutdown")

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """Attempt to stop the kernel process cleanly.

        Sends a shutdown_request and waits for the process to exit; a kernel
        that does not is sent SIGTERM, then SIGKILL. ``now=True`` kills at
        once. With ``restart=True`` the connection file is kept (and a later
        :meth:`start_kernel` reuses it). A start or restart still waiting for
        its kernel is abandoned at once: that kernel is killed and the call
        waiting for it raises :class:`LifecycleError`.
        """
        self._check_loop()
        ready = self._begin_ready()
        if not self._owns_kernel:
            await self._let_go()
            self._settle_ready(ready, None)
            return
        # The intent counts before we queue for the lock: a start holding it gives way.
        self._shutdowns_waiting += 1
        error: BaseException | None = None
        try:
            task = self._launch_task
            if task is not None and not task.done():
                self._enter_stop(restart)
                task.cancel()
            async with self._get_lock():
                # No process: we abandoned a start, or an (automatic) restart between two.
                ending = self._proc is not None or self._state in (S.SHUTTING_DOWN, S.RESTARTING)
                if ending:
                    self._enter_stop(restart)
                await self._stop_process(now=now, restart=restart)  # also stops supervising
                if ending and not restart:
                    await self._cleanup_files()
                    self._set_state(S.DEAD, "stopped")
                    self._emit("shutdown", now=now)
                elif not restart and self.connection_info is not None:
                    # Dead already (a restart that failed): its files are still ours.
                    await self._cleanup_files()
                if not restart:
                    self._close_context()
        except BaseException as e:
            error = e
            raise
        finally:
            self._shutdowns_waiting -= 1
            await self._delivered()
            # Last, with no await after it: jupyter_client's pending-kernel manager
            # removes the kernel as soon as this call returns, and waiters on
            # ``ready`` expect it gone.
            self._settle_ready(ready, error)

    async def _let_go(self) -> None:
        """Stop managing a kernel we do not own: it keeps running, its files stay."""
        async with self._get_lock():
            await self.supervisor.aclose()
            await self._close_control()
            if self._proc is not None:
                self._set_state(S.SHUTTING_DOWN, "shutdown")
                self._proc = None
                self._current.process_changed()
                self._set_state(S.DEAD, "stopped")
            self._close_context()
        await self._delivered()

    async def kill_kernel(self) -> None:
        """Kill the kernel and its process group at once (no shutdown_request)."""
        await self.shutdown_kernel(now=True)

    # -- cleanup --------------------------------------------------------------

    async def _cleanup_files(self) -> None:
        if self._files_foreign:
            return  # an attached kernel's files belong to whoever started it
        paths = [self.connection_file]
        if self.connection_info is not None:
            paths += self.connection_info.ipc_paths()
        _conn.remove_files(paths)

    async def cleanup_resources(self, restart: bool = False) -> None:
        """Release what the kernel left: its process (reaped), the connection file
        (unless ``restart``) and ipc sockets.

        After :meth:`request_shutdown` and :meth:`finish_shutdown` this completes
        the shutdown: the state becomes ``dead`` and a ``shutdown`` event follows.
        """
        try:
            async with self._get_lock():
                if self._proc is not None and not await self._proc.is_alive():
                    await self._stop_process(now=True, restart=restart)
                await self._close_control()
                if not restart and self._proc is None:
                    await self._cleanup_files()
                    if self._state is S.SHUTTING_DOWN:
                        self._set_state(S.DEAD, "stopped")
                        self._emit("shutdown", now=False)
                if not restart:
                    self._close_context()
        finally:
            await self._delivered()

    async def cleanup(self, connection_file: bool = True) -> None:
        """Clean up resources when the kernel is shut down."""
        await self.cleanup_resources(restart=not connection_file)

"""The lifecycle manager of one kernel: the second seed's API as an async core.

:class:`AsyncKernelManager` starts a kernel, interrupts, restarts and shuts
it down, and owns the kernel's state machine. Every wait is on an event
(the process's exit, a reply) with a deadline; nothing sleeps a fixed time.
The blocking :class:`kernelkeeper.KernelManager` runs this same code on the
library's event-loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from . import connection as _conn
from .client import AsyncKernelClient
from .connection import ConnectionInfo
from .curve import POLICIES
from .errors import ConfigurationError, LifecycleError, NotRunningError
from .events import KernelEvent, KernelEvents
from .finder import KernelFinder
from .kernelspec import KernelSpec
from .launch import launch_kernel, uses_handshake
from .procview import CurrentProcess
from .restarter import KernelRestarter
from .session import Message
from .states import KernelState
from .subproc import KernelManager as ProcessManager

__all__ = [
    "AsyncKernelManager",
    "KernelEvent",
    "KernelState",
    "async_run_kernel",
    "async_start_new_kernel",
]

log = logging.getLogger("kernelkeeper.manager")

_LAUNCH_KEYS = frozenset(
    {"cwd", "env", "extra_arguments", "stdout", "stderr", "independent", "startup_timeout"}
)

S = KernelState


_default_finder: KernelFinder | None = None


def default_finder(refresh: bool = False) -> KernelFinder:
    """The process-wide finder built from the installed provider plugins.

    Loading entry points scans every installed distribution (milliseconds
    per call), so it is done once; kernelspecs themselves are still read
    from disk on every lookup. ``refresh=True`` reloads the plugins.
    """
    global _default_finder
    if _default_finder is None or refresh:
        _default_finder = KernelFinder.from_entrypoints()
    return _default_finder


class AsyncKernelManager(KernelEvents):
    """Manages a single kernel in a subprocess on this host (async API).

    :param kernel_name: a kernel type (``spec/python3``, ``pyimport/kernel``)
        or a bare kernelspec name; empty means the default Python kernel.
    :param kernel_spec: use this spec directly instead of looking one up.
    :param transport: ``tcp`` (default) or ``ipc``.
    :param shutdown_wait_time: seconds a kernel gets to exit after a
        shutdown_request before it is sent SIGTERM (and as long again before SIGKILL).
    :param autorestart: restart the kernel when it dies on its own.
    :param transport_encryption: CurveZMQ for tcp kernels: ``disabled``
        (default), ``auto`` or ``required`` (see :mod:`kernelkeeper.curve`).

    The manager belongs to the event loop that started its kernel; once that
    loop is closed (``asyncio.run()`` returned) another loop may take over.
    Listeners and restart callbacks never run on the loop (see
    :meth:`add_event_listener`).
    """

    def __init__(
        self,
        kernel_name: str = "",
        *,
        kernel_spec: KernelSpec | None = None,
        kernel_id: str | None = None,
        finder: KernelFinder | None = None,
        transport: str = "tcp",
        ip: str = "127.0.0.1",
        connection_file: str | None = None,
        shutdown_wait_time: float = 5.0,
        autorestart: bool = False,
        restart_limit: int = 5,
        transport_encryption: str = "disabled",
    ) -> None:
        if transport_encryption not in POLICIES:
            raise ConfigurationError(
                f"transport_encryption={transport_encryption!r}: expected one of {POLICIES}"
            )
        super().__init__()
        self.transport_encryption = transport_encryption
        self.kernel_name = kernel_name
        self._spec = kernel_spec
        self._finder = finder
        self.kernel_id = kernel_id or str(uuid.uuid4())
        self.transport = transport
        self.ip = ip
        self._connection_file = connection_file
        self.shutdown_wait_time = shutdown_wait_time
        self.connection_info: ConnectionInfo | None = None
        self._proc: ProcessManager | None = None
        self._launch_kw: dict[str, Any] = {}
        self._stopping = False
        self._control: AsyncKernelClient | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._launch_task: asyncio.Task[None] | None = None
        self._shutdowns_waiting = 0  # shutdown_kernel() calls not finished yet
        self.restarter = KernelRestarter(self, restart_limit=restart_limit)
        self.restarter.enabled = autorestart
        self._current = CurrentProcess(
            lambda: self._proc, lambda: self.kernel_id, self.interrupt_kernel
        )

    def __repr__(self) -> str:
        name = self.kernel_name or "python3"
        return f"<{type(self).__name__} {name} {self.kernel_id[:8]} {self._state.value}>"

    # -- description ----------------------------------------------------------

    @property
    def kernel_spec(self) -> KernelSpec:
        """The kernel's spec, looked up by ``kernel_name`` on first use."""
        if self._spec is None:
            finder = self._finder or default_finder()
            self._spec = finder.get_spec(self.kernel_name or None)
        return self._spec

    @property
    def ipykernel(self) -> bool:
        """Is this an ipykernel (nbclient adds IPython options when it is)?"""
        return uses_handshake(self.kernel_spec.argv)

    @property
    def autorestart(self) -> bool:
        return self.restarter.enabled

    @autorestart.setter
    def autorestart(self, value: bool) -> None:
        self.restarter.enabled = value

    @property
    def connection_file(self) -> str:
        """Path of the connection file (where it will be, before the start)."""
        if self._connection_file is None:
            self._connection_file = _conn.connection_file_path(self.kernel_id)
        return self._connection_file

    @connection_file.setter
    def connection_file(self, value: str) -> None:
        self._connection_file = value

    @property
    def has_kernel(self) -> bool:
        """Has a kernel been started that we are managing?"""
        return self._proc is not None

    @property
    def process(self) -> ProcessManager | None:
        """The process-level manager of the running kernel (first seed's API)."""
        return self._proc

    def get_connection_info(self, session: bool = False) -> dict[str, Any]:
        """The connection info as a dict (key as bytes, like jupyter_client)."""
        if self.connection_info is None:
            raise NotRunningError("The kernel has not been started")
        d = self.connection_info.to_dict()
        d["key"] = self.connection_info.key
        return d

    # -- restart callbacks ----------------------------------------------------

    def add_restart_callback(self, callback: Callable[[], Any], event: str = "restart") -> None:
        """Register a callback to be called when the kernel is restarted automatically
        (``event="restart"``) or has died for good (``event="dead"``).

        Like listeners, callbacks run on a library thread, never on the loop.
        """
        self.restarter.add_callback(callback, event)

    def remove_restart_callback(self, callback: Callable[[], Any], event: str = "restart") -> None:
        """Unregister a restart callback."""
        self.restarter.remove_callback(callback, event)

    # -- starting -------------------------------------------------------------

    def format_kernel_cmd(self, extra_arguments: Sequence[str] | None = None) -> list[str]:
        """The kernel's argv with ``{connection_file}`` and the like filled in."""
        cmd = self.kernel_spec.format_argv(self.connection_file)
        return cmd + list(extra_arguments or self._launch_kw.get("extra_arguments") or ())

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
        self.restarter.stop()
        if self._proc is not None and self._proc.exit_code is None:
            self.restarter.watch()

    async def start_kernel(self, **kw: Any) -> None:
        """Start a kernel on this host in a separate process.

        Keyword arguments: ``cwd``, ``env`` (replaces the inherited
        environment; the spec's env applies on top), ``extra_arguments``,
        ``stdout``/``stderr`` (passed to the process; stderr is otherwise
        captured, copied to ours and kept for error reports),
        ``independent`` (let the kernel outlive this process),
        ``startup_timeout``. For an ipykernel this returns once the kernel
        has bound its ports; then ``client().wait_for_ready()``.

        Raises :class:`LifecycleError` if a kernel is already running, or if
        :meth:`shutdown_kernel` is called meanwhile (the start is abandoned and
        the kernel killed). After ``shutdown_kernel(restart=True)`` the new
        kernel reuses the connection file, key and ports.
        """
        unknown = set(kw) - _LAUNCH_KEYS
        if unknown:
            raise TypeError(f"start_kernel() got unexpected arguments: {sorted(unknown)}")
        try:
            async with self._get_lock():
                if self._proc is not None:
                    if await self._proc.is_alive():
                        raise LifecycleError(
                            f"Kernel {self.kernel_id} is already running; "
                            "shut it down or restart it instead"
                        )
                    await self._stop_process(now=True, restart=False)  # died, not cleaned up
                self.kernel_spec  # noqa: B018 - a bad spec fails here, before any state change
                reuse = self._state is S.RESTARTING and self.connection_info is not None
                self._launch_kw = dict(kw)
                self._set_state(S.STARTING, "start")
                await self._run_launch(self.connection_info if reuse else None, "started")
        finally:
            await self._delivered()

    async def _run_launch(self, info: ConnectionInfo | None, kind: str) -> None:
        """Launch as a task of its own, which a shutdown_kernel() call may cancel."""
        if self._shutdowns_waiting:
            self._launch_aborted()
        task = asyncio.get_running_loop().create_task(
            self._launch(info, kind), name=f"kk-launch-{self.kernel_id[:8]}"
        )
        self._launch_task = task
        try:
            await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            cancelling = getattr(me, "cancelling", None)  # 3.11+: was *our* task cancelled?
            if task.cancelled() and self._shutdowns_waiting and not (cancelling and cancelling()):
                self._launch_aborted()
            raise
        finally:
            if self._launch_task is task:
                self._launch_task = None

    def _launch_aborted(self) -> None:
        raise LifecycleError(
            f"The start of kernel {self.kernel_id} was abandoned: shutdown_kernel() was called"
        )

    async def _launch(self, info: ConnectionInfo | None, kind: str) -> None:
        spec = self.kernel_spec
        self._stopping = False
        kw = dict(self._launch_kw)
        if self.transport_encryption != "disabled":
            # Only when asked: launch_kernel gains this keyword with CurveZMQ support.
            kw["transport_encryption"] = self.transport_encryption
        try:
            info, proc = await launch_kernel(
                spec,
                kernel_id=self.kernel_id,
                connection_file=self.connection_file,
                connection_info=info,
                transport=self.transport,
                ip=self.ip,
                kernel_name=self.kernel_name or spec.name,
                **kw,
            )
        except BaseException:
            if self._state in (S.STARTING, S.RESTARTING):  # not when a shutdown took over
                self._set_state(S.DEAD, "launch_failed")
            raise
        self.connection_info = info
        self._proc = proc
        self._current.process_changed()
        self._set_state(S.STARTING, "launched")
        self._emit(kind, pid=proc.pid)
        self.restarter.watch()

    async def _on_unexpected_exit(self, proc: ProcessManager) -> None:
        self._set_state(S.DEAD, "died")
        self._emit("died", exit_code=proc.exit_code)

    def _mark_dead(self, reason: str) -> None:
        cause = "launch_failed" if self._state is S.RESTARTING else "died"
        self._set_state(S.DEAD, cause, reason=reason)

    async def _auto_restart(self) -> None:
        async with self._get_lock():
            self._set_state(S.RESTARTING, "restart")
            await self._stop_process(now=True, restart=True)
            await self._run_launch(self.connection_info, "restarted")

    async def wait_ready(self, timeout: float | None = 60.0) -> Message:
        """Wait until the kernel answers kernel_info (using a short-lived client);
        a kernel still ``starting`` is ``idle`` then."""
        self._check_loop()
        kc = self.client()
        # This probe's own busy/idle must not move the state: the client closes
        # before the kernel's final idle arrives, which would leave it busy.
        kc.status_hook = None
        kc.start_channels(stdin=False, hb=False)
        try:
            reply = await kc.wait_for_ready(timeout)
        finally:
            await kc.aclose()
        if self._state is S.STARTING:
            self._set_state(S.IDLE, "ready")
            await self._delivered()
        return reply

    # -- clients --------------------------------------------------------------

    def client(self, **kwargs: Any) -> AsyncKernelClient:
        """A new client connected to this kernel (channels not started yet)."""
        if self.connection_info is None:
            raise NotRunningError("Start the kernel before asking for a client")
        kc = AsyncKernelClient(
            self.connection_info,
            manager=self._current,
            interrupt_mode=self.kernel_spec.interrupt_mode,
            **kwargs,
        )
        kc.status_hook = self._on_status
        return kc

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

    # -- seed API -------------------------------------------------------------

    async def is_alive(self) -> bool:
        """Is the kernel process still running?"""
        self._check_loop()
        return self._proc is not None and await self._proc.is_alive()

    async def signal_kernel(self, signum: int) -> None:
        """Send ``signum`` to the kernel's process group (the kernel and its children)."""
        self._check_loop()
        if self._proc is None:
            raise NotRunningError("Cannot signal kernel: no kernel is running")
        await self._proc.signal(signum)

    async def interrupt_kernel(self) -> None:
        """Interrupt the kernel: SIGINT, or an interrupt_request when its spec asks
        for ``interrupt_mode: message``."""
        self._check_loop()
        if self._proc is None:
            raise NotRunningError("Cannot interrupt kernel: no kernel is running")
        if self.kernel_spec.interrupt_mode == "message":
            kc = self._control_client()
            await kc.interrupt()
        else:
            await self._proc.interrupt()

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
        if restart:
            self._set_state(S.RESTARTING, "restart")
        else:
            self._set_state(S.SHUTTING_DOWN, "shutdown")
        await self._control_client().shutdown(restart=restart)
        await self._delivered()

    async def finish_shutdown(
        self, waittime: float | None = None, pollinterval: float = 0.1, restart: bool = False
    ) -> None:
        """Wait for the kernel to exit after a shutdown request; escalate if it does not.

        After ``waittime`` seconds (default ``shutdown_wait_time``) the group
        gets SIGTERM, and after as long again SIGKILL. The process's exit is
        awaited as an event; ``pollinterval`` is accepted for compatibility
        and not used.
        """
        self._check_loop()
        proc = self._proc
        if proc is None:
            return
        self._stopping = True
        wait = self.shutdown_wait_time if waittime is None else waittime
        if await proc.wait(timeout=wait):
            log.info(
                "Kernel %s did not exit after shutdown_request; sending SIGTERM", self.kernel_id
            )
            await proc.signal(signal.SIGTERM)
            if await proc.wait(timeout=max(wait, 1.0)):
                log.warning("Kernel %s ignored SIGTERM; killing it", self.kernel_id)
                await proc.kill()

    async def _stop_process(self, *, now: bool, restart: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        self._stopping = True
        await self.restarter.aclose()
        if await proc.is_alive():
            if now:
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
        # The intent counts before we queue for the lock: a start holding it gives way.
        self._shutdowns_waiting += 1
        try:
            task = self._launch_task
            if task is not None and not task.done():
                if restart:
                    self._set_state(S.RESTARTING, "restart")
                else:
                    self._set_state(S.SHUTTING_DOWN, "shutdown")
                task.cancel()
            async with self._get_lock():
                if self._proc is None:
                    if self._state is S.SHUTTING_DOWN:  # we abandoned a start
                        await self._cleanup_files()
                        self._set_state(S.DEAD, "stopped")
                        self._emit("shutdown", now=now)
                    return
                if restart:
                    self._set_state(S.RESTARTING, "restart")
                else:
                    self._set_state(S.SHUTTING_DOWN, "shutdown")
                await self._stop_process(now=now, restart=restart)
                if not restart:
                    await self._cleanup_files()
                    self._set_state(S.DEAD, "stopped")
                    self._emit("shutdown", now=now)
        finally:
            self._shutdowns_waiting -= 1
            await self._delivered()

    async def restart_kernel(self, now: bool = False, newports: bool = False, **kw: Any) -> None:
        """Restart the kernel with the arguments that were used to launch it.

        The same connection file, key and ports are used again (unless
        ``newports=True``). ``now=True`` kills the old kernel at once instead of
        asking it to shut down. Keyword arguments override those of the start.
        """
        unknown = set(kw) - _LAUNCH_KEYS
        if unknown:
            raise TypeError(f"restart_kernel() got unexpected arguments: {sorted(unknown)}")
        try:
            async with self._get_lock():
                if self._proc is None:
                    raise NotRunningError("Cannot restart: no kernel is running")
                self._set_state(S.RESTARTING, "restart")
                self._emit("restarting", now=now)
                await self._stop_process(now=now, restart=True)
                self._launch_kw.update(kw)
                info = self.connection_info
                if newports and info is not None:
                    # Same key, ports chosen anew (port 0: the kernel or launch picks them).
                    info = info.replace(
                        shell_port=0, iopub_port=0, stdin_port=0, control_port=0, hb_port=0
                    )
                await self._run_launch(info, "restarted")
        finally:
            await self._delivered()

    async def _cleanup_files(self) -> None:
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
        finally:
            await self._delivered()

    async def cleanup(self, connection_file: bool = True) -> None:
        """Clean up resources when the kernel is shut down."""
        await self.cleanup_resources(restart=not connection_file)

    async def kill_kernel(self) -> None:
        """Kill the kernel and its process group at once (no shutdown_request)."""
        await self.shutdown_kernel(now=True)

    # -- context management -----------------------------------------------------

    async def __aenter__(self) -> AsyncKernelManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown_kernel(now=True)


async def async_start_new_kernel(
    startup_timeout: float = 60, kernel_name: str = "python", **kwargs: Any
) -> tuple[AsyncKernelManager, AsyncKernelClient]:
    """Start a new kernel and return its manager and a ready client.

    Keyword arguments go to :meth:`AsyncKernelManager.start_kernel` (and the
    manager's own options, e.g. ``transport``, to its constructor).
    """
    ctor = {k: kwargs.pop(k) for k in list(kwargs) if k not in _LAUNCH_KEYS}
    km = AsyncKernelManager(kernel_name, **ctor)
    await km.start_kernel(startup_timeout=startup_timeout, **kwargs)
    kc = km.client()
    try:
        kc.start_channels()
        await kc.wait_for_ready(timeout=startup_timeout)
    except BaseException:
        await kc.aclose()
        await km.shutdown_kernel(now=True)
        raise
    return km, kc


@contextlib.asynccontextmanager
async def async_run_kernel(**kwargs: Any) -> AsyncIterator[AsyncKernelClient]:
    """An async context manager running a kernel; yields a ready client, shuts down on exit."""
    km, kc = await async_start_new_kernel(**kwargs)
    try:
        yield kc
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=True)

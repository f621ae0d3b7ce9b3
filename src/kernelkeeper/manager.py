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
import dataclasses
import enum
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from . import connection as _conn
from .client import AsyncKernelClient
from .connection import ConnectionInfo
from .errors import KernelError, NotRunningError
from .finder import KernelFinder
from .kernelspec import KernelSpec
from .launch import launch_kernel, uses_handshake
from .procview import CurrentProcess
from .restarter import KernelRestarter
from .session import Message
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


class KernelState(str, enum.Enum):
    """Where a managed kernel is in its life."""

    NOT_STARTED = "not_started"
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RESTARTING = "restarting"
    SHUTTING_DOWN = "shutting_down"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class KernelEvent:
    """A lifecycle event: ``kind`` is one of started, state, restarting,
    restarted, died, shutdown."""

    kind: str
    kernel_id: str
    state: KernelState
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    time: float = dataclasses.field(default_factory=time.time)


class AsyncKernelManager:
    """Manages a single kernel in a subprocess on this host (async API).

    :param kernel_name: a kernel type (``spec/python3``, ``pyimport/kernel``)
        or a bare kernelspec name; empty means the default Python kernel.
    :param kernel_spec: use this spec directly instead of looking one up.
    :param transport: ``tcp`` (default) or ``ipc``.
    :param shutdown_wait_time: seconds a kernel gets to exit after a
        shutdown_request before it is sent SIGTERM (and as long again before SIGKILL).
    :param autorestart: restart the kernel when it dies on its own.
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
    ) -> None:
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
        self._state = KernelState.NOT_STARTED
        self._listeners: list[Callable[[KernelEvent], Any]] = []
        self._control: AsyncKernelClient | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
    def state(self) -> KernelState:
        return self._state

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

    # -- events ---------------------------------------------------------------

    def add_event_listener(self, callback: Callable[[KernelEvent], Any]) -> None:
        """Call ``callback(event)`` on every lifecycle event and state change."""
        self._listeners.append(callback)

    def remove_event_listener(self, callback: Callable[[KernelEvent], Any]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def _emit(self, kind: str, **detail: Any) -> None:
        event = KernelEvent(kind, self.kernel_id, self._state, detail)
        for cb in list(self._listeners):
            try:
                cb(event)
            except Exception:
                log.exception("Kernel event listener %r failed", cb)

    def _set_state(self, state: KernelState, **detail: Any) -> None:
        if state is not self._state:
            self._state = state
            self._emit("state", **detail)

    def _on_status(self, msg: Message) -> None:
        # Clients made by client() report the kernel's busy/idle to us.
        if self._state in (KernelState.STARTING, KernelState.IDLE, KernelState.BUSY):
            s = msg["content"].get("execution_state")
            if s == "busy":
                self._set_state(KernelState.BUSY)
            elif s == "idle":
                self._set_state(KernelState.IDLE)

    def add_restart_callback(self, callback: Callable[[], Any], event: str = "restart") -> None:
        """Register a callback to be called when the kernel is restarted automatically
        (``event="restart"``) or has died for good (``event="dead"``)."""
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
        instead of failing obscurely when another loop drives the manager."""
        loop = asyncio.get_running_loop()
        if self._proc is None or self._loop is None or self._loop.is_closed():
            if loop is not self._loop:
                self._loop, self._lock = loop, None
        elif loop is not self._loop:
            raise KernelError(
                f"{self!r} belongs to the event loop that started its kernel; call it "
                "from that loop (or use the blocking kernelkeeper.KernelManager, which "
                "works from any thread or loop)"
            )

    async def start_kernel(self, **kw: Any) -> None:
        """Start a kernel on this host in a separate process.

        Keyword arguments: ``cwd``, ``env`` (replaces the inherited
        environment; the spec's env applies on top), ``extra_arguments``,
        ``stdout``/``stderr`` (passed to the process; stderr is otherwise
        captured, copied to ours and kept for error reports),
        ``independent`` (let the kernel outlive this process),
        ``startup_timeout``. For an ipykernel this returns once the kernel
        has bound its ports; then ``client().wait_for_ready()``.
        """
        async with self._get_lock():
            if self._proc is not None:
                raise KernelError(f"Kernel {self.kernel_id} is already running")
            unknown = set(kw) - _LAUNCH_KEYS
            if unknown:
                raise TypeError(f"start_kernel() got unexpected arguments: {sorted(unknown)}")
            self._launch_kw = dict(kw)
            await self._launch(reuse=False)

    async def _launch(self, *, reuse: bool) -> None:
        spec = self.kernel_spec
        self._set_state(KernelState.RESTARTING if reuse else KernelState.STARTING)
        self._stopping = False
        try:
            info, proc = await launch_kernel(
                spec,
                kernel_id=self.kernel_id,
                connection_file=self.connection_file,
                connection_info=self.connection_info if reuse else None,
                transport=self.transport,
                ip=self.ip,
                kernel_name=self.kernel_name or spec.name,
                **self._launch_kw,
            )
        except BaseException:
            self._set_state(KernelState.DEAD)
            raise
        self.connection_info = info
        self._proc = proc
        self._current.process_changed()
        self._set_state(KernelState.STARTING)
        self._emit("restarted" if reuse else "started", pid=proc.pid)
        self.restarter.watch()

    async def _on_unexpected_exit(self, proc: ProcessManager) -> None:
        self._set_state(KernelState.DEAD)
        self._emit("died", exit_code=proc.exit_code)

    def _mark_dead(self, reason: str) -> None:
        self._set_state(KernelState.DEAD, reason=reason)

    async def _auto_restart(self) -> None:
        async with self._get_lock():
            await self._stop_process(now=True, restart=True)
            await self._launch(reuse=True)

    async def wait_ready(self, timeout: float | None = 60.0) -> Message:
        """Wait until the kernel answers kernel_info (using a short-lived client)."""
        kc = self.client()
        kc.start_channels(stdin=False, hb=False)
        try:
            return await kc.wait_for_ready(timeout)
        finally:
            await kc.aclose()

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
        if self._proc is None:
            raise NotRunningError("Cannot interrupt kernel: no kernel is running")
        if self.kernel_spec.interrupt_mode == "message":
            kc = self._control_client()
            await kc.interrupt()
        else:
            await self._proc.interrupt()

    async def request_shutdown(self, restart: bool = False) -> None:
        """Send a shutdown_request on the control channel (does not wait)."""
        self._check_loop()
        if self._proc is None or self.connection_info is None:
            return
        self._stopping = True
        await self._control_client().shutdown(restart=restart)

    async def finish_shutdown(
        self, waittime: float | None = None, pollinterval: float = 0.1, restart: bool = False
    ) -> None:
        """Wait for the kernel to exit after a shutdown request; escalate if it does not.

        After ``waittime`` seconds (default ``shutdown_wait_time``) the group
        gets SIGTERM, and after as long again SIGKILL. The process's exit is
        awaited as an event; ``pollinterval`` is accepted for compatibility
        and not used.
        """
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
        once. With ``restart=True`` the connection file is kept.
        """
        async with self._get_lock():
            if self._proc is None:
                return
            self._set_state(KernelState.RESTARTING if restart else KernelState.SHUTTING_DOWN)
            await self._stop_process(now=now, restart=restart)
            if not restart:
                await self._cleanup_files()
                self._set_state(KernelState.DEAD)
                self._emit("shutdown", now=now)

    async def restart_kernel(self, now: bool = False, newports: bool = False, **kw: Any) -> None:
        """Restart the kernel with the arguments that were used to launch it.

        The same connection file, key and ports are used again (unless
        ``newports=True``). ``now=True`` kills the old kernel at once instead of
        asking it to shut down. Keyword arguments override those of the start.
        """
        async with self._get_lock():
            if self._proc is None:
                raise NotRunningError("Cannot restart: no kernel is running")
            unknown = set(kw) - _LAUNCH_KEYS
            if unknown:
                raise TypeError(f"restart_kernel() got unexpected arguments: {sorted(unknown)}")
            self._set_state(KernelState.RESTARTING)
            self._emit("restarting", now=now)
            await self._stop_process(now=now, restart=True)
            self._launch_kw.update(kw)
            if newports:
                assert self.connection_info is not None
                self.connection_info = self.connection_info.replace(
                    shell_port=0, iopub_port=0, stdin_port=0, control_port=0, hb_port=0
                )
            await self._launch(reuse=not newports)

    async def _cleanup_files(self) -> None:
        paths = [self.connection_file]
        if self.connection_info is not None:
            paths += self.connection_info.ipc_paths()
        _conn.remove_files(paths)

    async def cleanup_resources(self, restart: bool = False) -> None:
        """Release what the kernel left: its process (reaped), the connection file
        (unless ``restart``) and ipc sockets."""
        if self._proc is not None and not await self._proc.is_alive():
            await self._stop_process(now=True, restart=restart)
        await self._close_control()
        if not restart and self._proc is None:
            await self._cleanup_files()

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

"""The lifecycle manager of one kernel: the second seed's API as an async core.

:class:`AsyncKernelManager` starts a kernel, interrupts, restarts and shuts
it down, and owns the kernel's state machine. Every wait is on an event
(the process's exit, a reply) with a deadline; nothing sleeps a fixed time.
The blocking :class:`kernelkeeper.KernelManager` runs this same code on the
library's event-loop thread.

The class is built in layers, each a module of its own:
:mod:`kernelkeeper.events` (state and listeners), :mod:`kernelkeeper.stopping`
(loop ownership, shutdown, cleanup), :mod:`kernelkeeper.starting` (start,
restart, the supervisor's hooks) and this module (description, clients,
signals, readiness). :func:`~kernelkeeper.async_start_new_kernel` and
:func:`~kernelkeeper.async_run_kernel` live in :mod:`kernelkeeper.starters`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from .client import AsyncKernelClient
from .connection import ConnectionInfo
from .curve import POLICIES
from .errors import ConfigurationError, LifecycleError, NotRunningError, RuntimeDirError
from .events import KernelEvent
from .finder import KernelFinder
from .finder import default_finder as default_finder
from .kernelspec import KernelSpec
from .launch import uses_handshake
from .policy import RestartPolicy
from .procview import CurrentProcess
from .session import Message
from .starting import LAUNCH_KEYS, KernelStarting
from .states import KernelState
from .subproc import KernelManager as ProcessManager
from .supervisor import KernelHooks, Supervisor

__all__ = ["AsyncKernelManager", "KernelEvent", "KernelState"]

# The blocking face imports it from here.
_LAUNCH_KEYS = LAUNCH_KEYS

S = KernelState


class AsyncKernelManager(KernelStarting):
    """Manages a single kernel in a subprocess on this host (async API).

    :param kernel_name: a kernel type (``spec/python3``, ``pyimport/kernel``)
        or a bare kernelspec name; empty means the default Python kernel.
    :param kernel_spec: use this spec directly instead of looking one up.
    :param transport: ``tcp`` (default) or ``ipc``.
    :param shutdown_wait_time: seconds a kernel gets to exit after a
        shutdown_request before it is sent SIGTERM (and as long again before SIGKILL).
    :param autorestart: restart the kernel when it dies on its own (at most
        ``restart_limit`` times in a row, see :mod:`kernelkeeper.policy`).
    :param restart_on_hang: restart (kill first) a kernel whose heartbeat stops.
    :param heartbeat_interval: seconds between heartbeat pings; ``heartbeat_misses``
        unanswered in a row make the kernel hung (a ``hung`` event). Pinged only
        with ``autorestart``, ``restart_on_hang`` or ``monitor_heartbeat``.
    :param restart_policy: the full restart rules (window, stable start time);
        replaces ``autorestart``, ``restart_limit`` and ``restart_on_hang``.
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
        restart_on_hang: bool = False,
        heartbeat_interval: float = 3.0,
        heartbeat_misses: int = 4,
        monitor_heartbeat: bool = False,
        restart_policy: RestartPolicy | None = None,
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
        self._restarts_waiting = 0  # restart_kernel() calls not finished yet
        policy = restart_policy or RestartPolicy(
            restart_on_death=autorestart,
            restart_on_hang=restart_on_hang,
            restart_limit=restart_limit,
        )
        hooks = KernelHooks(
            kernel_id=lambda: self.kernel_id,
            process=lambda: self._proc,
            connection=lambda: self.connection_info,
            stopping=self._stop_intended,
            emit=self._emit,
            deliver=self._deliver,
            died=self._on_died,
            restart=self._auto_restart,
            give_up=self._give_up,
        )
        #: Follows the running kernel's exit and heartbeat (see :mod:`kernelkeeper.supervisor`).
        self.supervisor = Supervisor(
            hooks,
            policy,
            heartbeat_interval=heartbeat_interval,
            heartbeat_misses=heartbeat_misses,
            monitor_heartbeat=monitor_heartbeat,
        )
        self._current = CurrentProcess(
            lambda: self._proc, lambda: self.kernel_id, self.interrupt_kernel
        )

    def __repr__(self) -> str:
        name = self.kernel_name or "python3"
        return f"<{type(self).__name__} {name} {self.kernel_id[:8]} {self._state.value}>"

    # -- description ----------------------------------------------------------

    @property
    def ipykernel(self) -> bool:
        """Is this an ipykernel (nbclient adds IPython options when it is)?"""
        return uses_handshake(self.kernel_spec.argv)

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

    def adopt_id(self, kernel_id: str, connection_file: str | None = None) -> None:
        """Take ``kernel_id`` as this kernel's id, and move its connection file to
        ``connection_file`` (None: the path stays; before the start a default
        path still follows the id).

        The file on disk is renamed by a hard link then an unlink, so another
        kernel's file is never overwritten; the process manager's id and
        cleanup list follow. The kernel itself is not told. Raises
        :class:`LifecycleError` if ``connection_file`` exists already (and
        :class:`RuntimeDirError` if the rename fails otherwise); nothing has
        changed then.
        """
        proc = self._proc
        # Not looked up without a new path: before the start, a default path
        # not yet fixed must follow the new id.
        old = self.connection_file if connection_file is not None else None
        if connection_file is not None and old is not None and connection_file != old:
            if os.path.lexists(connection_file):
                raise LifecycleError(f"Cannot adopt {connection_file}: the file exists")
            if os.path.lexists(old):  # else not written yet: only the path changes
                try:
                    os.link(old, connection_file)
                except FileExistsError:  # created since the check
                    raise LifecycleError(
                        f"Cannot adopt {connection_file}: the file exists"
                    ) from None
                except OSError as e:
                    raise RuntimeDirError(
                        f"Cannot rename {old} to {connection_file}: {e}", connection_file
                    ) from e
                os.unlink(old)
            self.connection_file = connection_file
            if proc is not None:
                proc.files_to_cleanup = [
                    connection_file if p == old else p for p in proc.files_to_cleanup
                ]
        self.kernel_id = kernel_id
        if proc is not None:
            proc.kernel_id = kernel_id

    # -- readiness and clients ------------------------------------------------

    async def wait_ready(self, timeout: float | None = 60.0) -> Message:
        """Wait until the kernel answers kernel_info (using a short-lived client);
        a kernel still ``starting`` is ``idle`` then."""
        self._check_loop()
        proc = self._proc
        kc = self.client()
        # This probe's own busy/idle must not move the state: the client closes
        # before the kernel's final idle arrives.
        kc.status_hook = None
        kc.start_channels(stdin=False, hb=False)
        try:
            reply = await kc.wait_for_ready(timeout)
        finally:
            await kc.aclose()
        if proc is not None and self._proc is proc:
            # The answer of the running process: from now on statuses signed
            # by the process before it are known to be stale.
            self._learn_session(reply["header"].get("session") or "")
        if self._state is S.STARTING:
            self._set_state(S.IDLE, "ready")
        await self._delivered()
        return reply

    def client(self, **kwargs: Any) -> AsyncKernelClient:
        """A new client connected to this kernel (channels not started yet).

        Its iopub statuses move :attr:`state` between busy and idle (see
        :meth:`~kernelkeeper.events.KernelEvents._on_status` for those that do not).
        """
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

    # -- signals --------------------------------------------------------------

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

    # -- context management -----------------------------------------------------

    async def __aenter__(self) -> AsyncKernelManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown_kernel(now=True)

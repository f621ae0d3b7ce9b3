"""The lifecycle manager of one kernel: the second seed's API as an async core.

:class:`AsyncKernelManager` starts a kernel, interrupts, restarts and shuts
it down, and owns the kernel's state machine. Every wait is on an event
(the process's exit, a reply) with a deadline; nothing sleeps a fixed time.
The blocking :class:`kernelkeeper.KernelManager` runs this same code on the
library's event-loop thread.

The class is built in layers, each a module of its own:
:mod:`kernelkeeper.events` (state and listeners), :mod:`kernelkeeper.stopping`
(loop ownership, shutdown, cleanup), :mod:`kernelkeeper.starting` (start,
restart, the supervisor's hooks), :mod:`kernelkeeper.manager_compat`
(jupyter_client's other names, attaching to a running kernel) and this
module (construction, description, clients, signals, readiness).
:func:`~kernelkeeper.async_start_new_kernel` and
:func:`~kernelkeeper.async_run_kernel` live in :mod:`kernelkeeper.starters`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

import zmq.asyncio

from .attach import ForeignProcess
from .client import AsyncKernelClient
from .connection import ConnectionInfo, new_key, rename_connection_file
from .curve import POLICIES
from .errors import (
    ConfigurationError,
    KernelNotReadyError,
    KernelTimeoutError,
    LifecycleError,
    NotRunningError,
)
from .events import KernelEvent
from .finder import KernelFinder
from .finder import default_finder as default_finder
from .kernelspec import KernelSpec
from .launch import uses_handshake
from .manager_compat import JupyterSurface
from .manager_config import UNSET as _UNSET
from .manager_config import manager_options
from .policy import RestartPolicy
from .procview import CurrentProcess
from .session import Message
from .starting import LAUNCH_KEYS
from .states import KernelState
from .subproc import KernelManager as ProcessManager
from .supervisor import KernelHooks, Supervisor

__all__ = ["AsyncKernelManager", "KernelEvent", "KernelState", "attach_kernel"]

# The blocking face imports it from here.
_LAUNCH_KEYS = LAUNCH_KEYS

S = KernelState


def _from_spec_manager(ksm: Any, name: str) -> KernelSpec:
    """Our spec for ``name`` from a jupyter_client ``KernelSpecManager``-like object."""
    found = ksm.get_kernel_spec(name)
    data = found.to_dict() if hasattr(found, "to_dict") else dict(vars(found))
    resource_dir = getattr(found, "resource_dir", "") or ""
    return KernelSpec.from_dict(data, resource_dir=resource_dir, name=name)


class AsyncKernelManager(JupyterSurface):
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
    :param stable_start_time: see :class:`~kernelkeeper.policy.RestartPolicy`.
    :param owns_kernel: False: :meth:`shutdown_kernel` only lets go of the
        kernel (it keeps running) and :meth:`restart_kernel` is refused.

    jupyter_client's constructor keywords are taken too: ``config`` (a
    traitlets ``Config`` or a dict; the keys it would set on a kernel manager
    or its restarter are translated, see :mod:`kernelkeeper.manager_config`;
    keywords given directly win), ``parent`` (its ``config`` is used when no
    ``config`` is given), ``log`` (a logger for the manager's messages),
    ``context`` (a zmq context for :attr:`context`; not ours to destroy),
    ``kernel_spec_manager`` (specs are looked up there) and ``cache_ports``
    (kept: ports survive restarts here anyway). Any other keyword is a
    ``TypeError``.

    The manager belongs to the event loop that started its kernel; once that
    loop is closed (``asyncio.run()`` returned) another loop may take over.
    Listeners and restart callbacks never run on the loop (see
    :meth:`add_event_listener`).
    """

    def __init__(
        self,
        kernel_name: str = _UNSET,
        *,
        kernel_spec: KernelSpec | None = None,
        kernel_id: str | None = None,
        finder: KernelFinder | None = None,
        transport: str = _UNSET,
        ip: str = _UNSET,
        connection_file: str | None = _UNSET,
        shutdown_wait_time: float = _UNSET,
        autorestart: bool = _UNSET,
        restart_limit: int = _UNSET,
        restart_on_hang: bool = False,
        heartbeat_interval: float = _UNSET,
        heartbeat_misses: int = 4,
        monitor_heartbeat: bool = False,
        restart_policy: RestartPolicy | None = None,
        transport_encryption: str = "disabled",
        stable_start_time: float = _UNSET,
        owns_kernel: bool = True,
        cache_ports: bool = _UNSET,
        config: Mapping[str, Any] | None = None,
        parent: Any = None,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        context: zmq.asyncio.Context | None = None,
        kernel_spec_manager: Any = None,
    ) -> None:
        if transport_encryption not in POLICIES:
            raise ConfigurationError(
                f"transport_encryption={transport_encryption!r}: expected one of {POLICIES}"
            )
        opts = manager_options(
            config if config is not None else getattr(parent, "config", None),
            kernel_name=kernel_name,
            transport=transport,
            ip=ip,
            connection_file=connection_file,
            shutdown_wait_time=shutdown_wait_time,
            autorestart=autorestart,
            restart_limit=restart_limit,
            heartbeat_interval=heartbeat_interval,
            stable_start_time=stable_start_time,
            cache_ports=cache_ports,
        )
        super().__init__()
        #: The logger of this manager's messages (``log=``, jupyter_client's name).
        self.log = log if log is not None else logging.getLogger("kernelkeeper.manager")
        self.transport_encryption = transport_encryption
        self.kernel_name = opts["kernel_name"] or ""
        self._spec = kernel_spec
        # A spec given (or a jupyter_client spec manager's) is launched here, locally.
        self._spec_given = kernel_spec is not None or kernel_spec_manager is not None
        self._finder = finder
        self._spec_manager = kernel_spec_manager
        self.kernel_id = kernel_id or str(uuid.uuid4())
        self.transport = opts["transport"]
        self.ip = opts["ip"]
        self._connection_file = opts["connection_file"]
        self.shutdown_wait_time = float(opts["shutdown_wait_time"])
        self.cache_ports = bool(opts["cache_ports"])
        self._owns_kernel = owns_kernel
        self._files_foreign = False
        self._context, self._context_own = context, False
        self._key = new_key()
        self._ready = None
        self._ready_override = None
        self._jsession = None
        self._session_override = None
        self._paused_restarts = None
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
        stable: dict[str, Any] = {}
        if opts["stable_start_time"] is not None:
            stable["stable_start_time"] = float(opts["stable_start_time"])
        policy = restart_policy or RestartPolicy(
            restart_on_death=bool(opts["autorestart"]),
            restart_on_hang=restart_on_hang,
            restart_limit=int(opts["restart_limit"]),
            **stable,
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
            heartbeat_interval=float(opts["heartbeat_interval"]),
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
    def kernel_spec(self) -> KernelSpec:
        """The kernel's spec, looked up by ``kernel_name`` on first use (in the
        ``kernel_spec_manager`` when one was given)."""
        if self._spec is None and self._spec_manager is not None:
            self._spec = _from_spec_manager(self._spec_manager, self.kernel_name or "python3")
        return super().kernel_spec

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
            if not rename_connection_file(old, connection_file):
                raise LifecycleError(f"Cannot adopt {connection_file}: the file exists")
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
        kc.status_hook = kc.ready_hook = None
        kc.start_channels(stdin=False, hb=False)
        try:
            reply = await kc.wait_for_ready(timeout)
        except KernelTimeoutError as e:
            if isinstance(e, RuntimeError):
                raise
            # jupyter_client raises RuntimeError here; nbclient catches that.
            raise KernelNotReadyError(str(e)) from e
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
        # An attached kernel's spec may be unknown here: its manager's interrupt_kernel()
        # chooses signal or message itself, so the client always asks it.
        foreign = isinstance(self._proc, ForeignProcess)
        kc = AsyncKernelClient(
            self.connection_info,
            manager=self._current,
            interrupt_mode="signal" if foreign else self.kernel_spec.interrupt_mode,
            **kwargs,
        )
        kc.status_hook = self._on_status
        kc.ready_hook = self._on_ready_reply
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
        proc = self._proc
        if isinstance(proc, ForeignProcess):
            message = not proc.can_signal  # a kernel we attached to: signal it if we may
        else:
            message = self.kernel_spec.interrupt_mode == "message"
        if message:
            kc = self._control_client()
            await kc.interrupt()
        else:
            await proc.interrupt()

    # -- context management -----------------------------------------------------

    async def __aenter__(self) -> AsyncKernelManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown_kernel(now=True)


def attach_kernel(
    connection_file: str | os.PathLike[str], pid: int | None = None, **kwargs: Any
) -> AsyncKernelManager:
    """An :class:`AsyncKernelManager` for the running kernel of ``connection_file``
    (see :meth:`AsyncKernelManager.from_connection_file`)."""
    return AsyncKernelManager.from_connection_file(connection_file, pid, **kwargs)

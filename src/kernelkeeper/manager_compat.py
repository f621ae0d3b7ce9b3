"""The parts of jupyter_client's kernel-manager surface that are not lifecycle.

:class:`JupyterSurface` sits between :class:`~kernelkeeper.starting.KernelStarting`
and :class:`~kernelkeeper.AsyncKernelManager`: the connection info before the
start, ``session``, ``blocking_client()``, the restarter switches,
``update_env``, and attaching to a kernel we did not start
(:meth:`JupyterSurface.from_connection_file`, ``load_connection_info``). The
attributes it uses are set by ``AsyncKernelManager.__init__``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .attach import ForeignProcess
from .channels import RawSockets, connect_socket
from .connection import ConnectionInfo
from .errors import LifecycleError, NotRunningError
from .jupyter_session import JupyterSession
from .session import Session
from .starting import KernelStarting
from .states import KernelState

__all__ = ["JupyterSurface", "set_blocking_client_factory"]

S = KernelState
_M = TypeVar("_M", bound="JupyterSurface")

# The blocking face registers its client class here (see kernelkeeper/__init__.py):
# this layer does not import the faces.
_blocking_client_factory: Callable[[ConnectionInfo], Any] | None = None


def set_blocking_client_factory(factory: Callable[[ConnectionInfo], Any]) -> None:
    """Tell managers how to make the client ``blocking_client()`` returns."""
    global _blocking_client_factory
    _blocking_client_factory = factory


class JupyterSurface(RawSockets, KernelStarting):
    """jupyter_client's non-lifecycle kernel-manager names, over our state."""

    cache_ports: bool
    _jsession: JupyterSession | None
    _session_override: Any
    _paused_restarts: tuple[bool, bool] | None

    # -- connection info ------------------------------------------------------------

    def _planned_info(self) -> ConnectionInfo:
        """The connection the next start will use: our key, ports still to be chosen."""
        return ConnectionInfo(
            transport=self.transport, ip=self.ip, key=self._key, kernel_name=self.kernel_name
        )

    def get_connection_info(self, session: bool = False) -> dict[str, Any]:
        """The connection info as jupyter_client gives it: the nine keys, key as bytes.

        Before the start, the transport, ip and key the kernel will get, and
        port 0 for the ports it has yet to choose. ``session=True`` adds the
        ``session`` (the :attr:`session` object), as jupyter_client does.
        """
        info = self.connection_info or self._planned_info()
        d = info.to_dict()
        d.pop("kernel_name", None)
        d["key"] = info.key
        if session:
            d["session"] = self.session
        return d

    @property
    def session(self) -> Any:
        """jupyter_client's ``km.session`` for this kernel's key: ``feed_identities``,
        ``deserialize``, ``serialize``, ``msg`` and ``send`` (a
        :class:`~kernelkeeper.jupyter_session.JupyterSession`)."""
        if self._session_override is not None:
            return self._session_override
        info = self.connection_info or self._planned_info()
        current = self._jsession
        if current is None or current.key != info.key:
            current = self._jsession = JupyterSession(Session(info.key, info.signature_scheme))
        return current

    @session.setter
    def session(self, value: Any) -> None:
        self._session_override = value

    def load_connection_info(self, info: ConnectionInfo | Mapping[str, Any]) -> None:
        """Manage the kernel described by ``info`` (a dict or :class:`ConnectionInfo`),
        which someone else started (see :meth:`from_connection_file`)."""
        if not isinstance(info, ConnectionInfo):
            info = ConnectionInfo.from_dict(info)
        self._attach(info, None)

    def load_connection_file(self, connection_file: str | os.PathLike[str] | None = None) -> None:
        """Manage the kernel whose connection file is ``connection_file`` (default:
        :attr:`connection_file`)."""
        path = os.fspath(connection_file) if connection_file is not None else self.connection_file
        self.connection_file = path
        self._attach(ConnectionInfo.from_file(path), None)

    def _attach(self, info: ConnectionInfo, pid: int | None) -> None:
        if self._proc is not None:
            raise LifecycleError(f"{self!r} already manages a kernel")
        self.connection_info = info
        self._key = info.key
        self.transport, self.ip = info.transport, info.ip
        if info.kernel_name and not self.kernel_name:
            self.kernel_name = info.kernel_name  # what a restart starts
        self._files_foreign = True
        self._proc = ForeignProcess(info, pid, kernel_id=self.kernel_id)
        self._current.process_changed()
        if self._state is not S.STARTING:
            self._set_state(S.STARTING, "start")
        self._set_state(S.IDLE, "ready")
        self._settle_ready(self._begin_ready(), None)
        self._emit("started", attached=True, pid=pid)

    @classmethod
    def from_connection_file(
        cls: type[_M],
        connection_file: str | os.PathLike[str],
        pid: int | None = None,
        **kwargs: Any,
    ) -> _M:
        """A manager for the running kernel of ``connection_file``, which we did not start.

        ``is_alive()`` follows the kernel's heartbeat, and its process when
        ``pid`` is given. ``interrupt_kernel()`` sends SIGINT when the pid is
        known and the process is our user's, else an ``interrupt_request``.
        ``shutdown_kernel()`` sends a ``shutdown_request``, then (pid known)
        SIGTERM and SIGKILL; the connection file is left to whoever wrote
        it. ``restart_kernel()`` starts a new kernel of ours (the spec named by
        the file's ``kernel_name``, or the default) on the same ports and key.
        Other keywords go to the constructor (``owns_kernel=False``: shutdown
        lets the kernel run on). Raises :class:`ConnectionFileError`.
        """
        factory: Any = cls  # the constructor's keywords are AsyncKernelManager's
        km: _M = factory(connection_file=os.fspath(connection_file), **kwargs)
        km._attach(ConnectionInfo.from_file(connection_file), pid)
        return km

    # -- clients ----------------------------------------------------------------------

    def blocking_client(self) -> Any:
        """A blocking client (:class:`kernelkeeper.BlockingKernelClient`) for this kernel."""
        factory = _blocking_client_factory
        if factory is None:
            # Late binding, not an import of the faces: the package root loads the
            # blocking face on first use of the name, and that face registers here.
            factory = importlib.import_module(__package__ or "kernelkeeper").BlockingKernelClient
        return factory(self.connection_info or self._planned_info())

    # -- raw sockets (jupyter_client's ConnectionFileMixin) ---------------------------

    def _connect(self, channel: str, identity: bytes | None) -> Any:
        """A socket of :attr:`context` connected to ``channel``; the caller closes it."""
        if self.connection_info is None:
            raise NotRunningError("Start the kernel before connecting to it")
        return connect_socket(self.context, self.connection_info, channel, identity)

    # -- the restarter and the environment --------------------------------------------

    def start_restarter(self) -> None:
        """Resume automatic restarts paused by :meth:`stop_restarter` (jupyter_client's
        name; the supervisor itself always follows a running kernel)."""
        paused, self._paused_restarts = self._paused_restarts, None
        if paused is not None:
            self.autorestart, self.restart_on_hang = paused

    def stop_restarter(self) -> None:
        """Pause automatic restarts until :meth:`start_restarter`."""
        if self._paused_restarts is None:
            self._paused_restarts = (self.autorestart, self.restart_on_hang)
            self.autorestart = self.restart_on_hang = False

    def update_env(self, *, env: Mapping[str, str]) -> None:
        """Add ``env`` to the environment of the next (re)start, as jupyter_client 8.5 does.

        The running kernel is not changed.
        """
        base = self._launch_kw.get("env")
        self._launch_kw["env"] = {**(os.environ if base is None else base), **env}

    @property
    def provisioner(self) -> Any:
        """The running kernel's process view (``kill()``, ``is_alive()``, ``signal()``):
        what jupyter_client's tests reach through ``km.provisioner``."""
        return self._current if self._proc is not None else None

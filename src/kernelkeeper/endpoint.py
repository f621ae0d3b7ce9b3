"""Where a client's kernel listens: jupyter_client's connection-info surface.

``connection_file``, ``load_connection_file``, ``load_connection_info``,
``get_connection_info``, ``write_connection_file``, and ``ip``,
``transport``, the five ``*_port`` and ``kernel_name`` read from the loaded
info. This is the path of ``jupyter console --existing`` and of IDE
plug-ins: build a client from a file, load it, start the channels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import zmq

from .channels import RawSockets, connect_socket
from .connection import ConnectionInfo, remove_files, write_connection_file
from .errors import ConnectionFileError
from .session import Session

__all__ = ["KernelEndpoint", "as_connection_info"]


def as_connection_info(
    info: ConnectionInfo | Mapping[str, Any] | str | os.PathLike[str],
) -> ConnectionInfo:
    """``info`` (a :class:`ConnectionInfo`, a dict, or a connection file path) as
    :class:`ConnectionInfo`; :class:`ConnectionFileError` if it is not valid."""
    if isinstance(info, ConnectionInfo):
        return info
    if isinstance(info, (str, os.PathLike)):
        return ConnectionInfo.from_file(info)
    return ConnectionInfo.from_dict(info)


class KernelEndpoint(RawSockets):
    """The connection info of a client, and its jupyter_client accessors.

    Subclasses call :meth:`_connection_changed` hooks through
    :meth:`load_connection_info`; the session follows the loaded key unless
    one was given explicitly.
    """

    connection_info: ConnectionInfo | None
    session: Session
    #: The connection file this client was built from or loaded ("" if none).
    connection_file: str = ""
    #: The context of the sockets ``connect_*`` return.
    context: zmq.Context[Any]
    _explicit_session: bool = False
    _written: str = ""

    def _connection_changed(self, info: ConnectionInfo) -> None:
        """Called after new connection info is loaded (the client rewires its channels)."""

    def load_connection_info(self, info: ConnectionInfo | Mapping[str, Any]) -> None:
        """Take the connection info from a dict (as found in a connection file).

        As with jupyter_client, the key may be ``str`` or ``bytes``; a new key
        gives the client a new session (unless one was passed explicitly).
        """
        ci = as_connection_info(info)
        self.connection_info = ci
        if not self._explicit_session and (
            self.session.key != ci.key or self.session.signature_scheme != ci.signature_scheme
        ):
            self.session = Session(ci.key, ci.signature_scheme)
        self._connection_changed(ci)

    def load_connection_file(self, connection_file: str | os.PathLike[str] | None = None) -> None:
        """Load the connection info from ``connection_file`` (default: :attr:`connection_file`)."""
        path = os.fspath(connection_file) if connection_file is not None else self.connection_file
        if not path:
            raise ConnectionFileError("No connection file given to load")
        self.load_connection_info(ConnectionInfo.from_file(path))
        self.connection_file = path

    def get_connection_info(self, session: bool = False) -> dict[str, Any]:
        """The connection info as a dict (key as bytes, like jupyter_client).

        With ``session=True`` the dict also holds the client's ``session``.
        """
        ci = self._info()
        d = ci.to_dict()
        d["key"] = ci.key
        if session:
            d["session"] = self.session
        return d

    def write_connection_file(self, connection_file: str | os.PathLike[str] | None = None) -> str:
        """Write the connection info to ``connection_file`` (default:
        :attr:`connection_file`), created 0600; returns the path."""
        path = os.fspath(connection_file) if connection_file is not None else self.connection_file
        if not path:
            raise ConnectionFileError("No connection file path to write to")
        write_connection_file(self._info(), path)
        self.connection_file = self._written = path
        return path

    def cleanup_connection_file(self) -> None:
        """Remove the connection file, if :meth:`write_connection_file` wrote it."""
        path, self._written = self._written, ""
        if path:
            remove_files([path])

    def cleanup_ipc_files(self) -> None:
        """Remove the ipc socket files of the connection (a kernel we own has ended)."""
        if self.connection_info is not None:
            remove_files(self.connection_info.ipc_paths())

    # -- raw sockets (what jupyter_server's WebSocket handlers use) --------------

    def _connect(self, channel: str, identity: bytes | None) -> Any:
        # The sockets of RawSockets' connect_*: of :attr:`context`.
        return connect_socket(self.context, self._info(), channel, identity)

    def _info(self) -> ConnectionInfo:
        if self.connection_info is None:
            raise ConnectionFileError(
                "The client has no connection info; call load_connection_file() first"
            )
        return self.connection_info

    def _field(self, name: str, default: Any) -> Any:
        ci = self.connection_info
        return default if ci is None else getattr(ci, name)

    @property
    def transport(self) -> str:
        """``tcp`` or ``ipc``."""
        return str(self._field("transport", "tcp"))

    @property
    def ip(self) -> str:
        """The kernel's address (tcp) or socket path prefix (ipc)."""
        return str(self._field("ip", "127.0.0.1"))

    @property
    def shell_port(self) -> int:
        return int(self._field("shell_port", 0))

    @property
    def iopub_port(self) -> int:
        return int(self._field("iopub_port", 0))

    @property
    def stdin_port(self) -> int:
        return int(self._field("stdin_port", 0))

    @property
    def control_port(self) -> int:
        return int(self._field("control_port", 0))

    @property
    def hb_port(self) -> int:
        return int(self._field("hb_port", 0))

    @property
    def curve_publickey(self) -> bytes | None:
        """The kernel's CurveZMQ public key (None when unencrypted)."""
        return self._field("curve_publickey", None)  # type: ignore[no-any-return]

    @property
    def curve_secretkey(self) -> bytes | None:
        """The CurveZMQ secret key of the connection (a credential, like the key)."""
        return self._field("curve_secretkey", None)  # type: ignore[no-any-return]

    @property
    def ports(self) -> list[int]:
        """The five ports: shell, iopub, stdin, hb, control (jupyter_client's order)."""
        return [self.shell_port, self.iopub_port, self.stdin_port, self.hb_port, self.control_port]

    @property
    def kernel_name(self) -> str:
        """The kernel name recorded in the connection info ("" if none)."""
        return str(self._field("kernel_name", ""))

"""Connection info: the nine standard keys, connection files and port allocation.

Pure data and file I/O; nothing here opens a long-lived socket or a process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import secrets
import socket
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import KernelError

__all__ = [
    "CHANNELS",
    "ConnectionInfo",
    "allocate_ports",
    "new_key",
    "runtime_dir",
    "write_connection_file",
]

#: The five channels of a kernel, in the order of the connection file's ports.
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


def new_key() -> bytes:
    """A fresh random HMAC key (256 bits, hex encoded as Jupyter kernels expect)."""
    return secrets.token_hex(32).encode("ascii")


def runtime_dir() -> str:
    """Jupyter's runtime directory (created if missing, mode 0700)."""
    from jupyter_core.paths import jupyter_runtime_dir

    path = jupyter_runtime_dir()
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@dataclass(frozen=True)
class ConnectionInfo:
    """How to reach a kernel: the nine keys of a Jupyter connection file.

    ``key`` is kept as bytes and never shown by ``repr``.
    """

    transport: str = "tcp"
    ip: str = "127.0.0.1"
    shell_port: int = 0
    iopub_port: int = 0
    stdin_port: int = 0
    control_port: int = 0
    hb_port: int = 0
    key: bytes = dataclasses.field(default=b"", repr=False)
    signature_scheme: str = "hmac-sha256"
    kernel_name: str = ""
    #: CurveZMQ keypair of the kernel (Z85 bytes), when transport encryption is on.
    #: The same fields jupyter_client 8.10 and ipykernel 7.4 use.
    curve_publickey: bytes | None = dataclasses.field(default=None, repr=False)
    curve_secretkey: bytes | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.transport not in ("tcp", "ipc"):
            raise KernelError(f"Unknown transport {self.transport!r} (expected 'tcp' or 'ipc')")
        for name in ("key", "curve_publickey", "curve_secretkey"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, value.encode("ascii"))

    @property
    def encrypted(self) -> bool:
        """Does the kernel use CurveZMQ transport encryption?"""
        return bool(self.curve_publickey and self.curve_secretkey)

    @property
    def ports(self) -> dict[str, int]:
        """``{"shell": port, ...}`` for the five channels."""
        return {ch: int(getattr(self, f"{ch}_port")) for ch in CHANNELS}

    @property
    def has_ports(self) -> bool:
        """True when every channel has a port assigned (no zeros left)."""
        return all(self.ports.values())

    def url(self, channel: str) -> str:
        """The zmq address of ``channel``: ``tcp://ip:port`` or ``ipc://path-N``."""
        port = self.ports[channel]
        if self.transport == "tcp":
            host = f"[{self.ip}]" if ":" in self.ip else self.ip
            return f"tcp://{host}:{port}"
        return f"ipc://{self.ip}-{port}"

    def ipc_paths(self) -> list[str]:
        """The socket files an ipc kernel creates (empty for tcp)."""
        if self.transport != "ipc":
            return []
        return [f"{self.ip}-{p}" for p in self.ports.values() if p]

    def replace(self, **changes: Any) -> ConnectionInfo:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The connection-file form (key as text), as jupyter_client writes it."""
        d = dataclasses.asdict(self)
        d["key"] = self.key.decode("ascii")
        for name in ("curve_publickey", "curve_secretkey"):
            value = d.pop(name)
            if value is not None and self.encrypted:
                d[name] = value.decode("ascii")
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConnectionInfo:
        """Build from a connection file's dict; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for ch in CHANNELS:
            if f"{ch}_port" in kwargs:
                kwargs[f"{ch}_port"] = int(kwargs[f"{ch}_port"])
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ConnectionInfo:
        """Read a connection file."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def allocate_ports(ip: str = "127.0.0.1", count: int = 5) -> list[int]:
    """Ask the OS for ``count`` free TCP ports on ``ip``.

    Inherently racy (another process may take a port before the kernel binds
    it); kernelkeeper only uses it for kernels it cannot ask to bind port 0.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            # No SO_REUSEADDR: the port must not be in TIME_WAIT for the kernel.
            s.bind((ip, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def allocate_ipc_ports(prefix: str, count: int = 5) -> list[int]:
    """Pick ``count`` ipc 'ports' (path suffixes) whose socket files do not exist yet."""
    ports: list[int] = []
    n = 1
    while len(ports) < count:
        if not os.path.exists(f"{prefix}-{n}"):
            ports.append(n)
        n += 1
    return ports


def write_connection_file(info: ConnectionInfo, path: str | os.PathLike[str]) -> str:
    """Write ``info`` to ``path`` with mode 0600, atomically.

    The file is created 0600 from the start (never world-readable, not even
    for an instant) and moved into place, so a reader never sees half a file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kk-", suffix=".json", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info.to_dict(), f, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def remove_files(paths: Iterable[str]) -> None:
    """Remove files that may already be gone."""
    for p in paths:
        try:
            os.unlink(p)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


def connection_file_path(kernel_id: str) -> str:
    """Where the connection file of kernel ``kernel_id`` lives by default."""
    return str(Path(runtime_dir()) / f"kernel-{kernel_id}.json")

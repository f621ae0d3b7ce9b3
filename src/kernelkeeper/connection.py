"""Connection info: the nine standard keys, connection files and port allocation.

Pure data and file I/O; nothing here opens a long-lived socket or a process.
Bad input is reported as :class:`~kernelkeeper.errors.ConnectionFileError`
(a ``ValueError``) naming the file and the field; a runtime directory that
cannot be used is a :class:`~kernelkeeper.errors.RuntimeDirError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import json
import logging
import os
import secrets
import socket
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConnectionFileError, ConnectionFileNotFound, RuntimeDirError

__all__ = [
    "CHANNELS",
    "ConnectionInfo",
    "allocate_ports",
    "channel_listens",
    "find_connection_file",
    "new_key",
    "rename_connection_file",
    "runtime_dir",
    "write_connection_file",
]

log = logging.getLogger("kernelkeeper.connection")

#: The five channels of a kernel, in the order of the connection file's ports.
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")

#: Keys a connection file must have (the rest have defaults).
REQUIRED_KEYS = ("transport", "ip", "key", *(f"{ch}_port" for ch in CHANNELS))

_Z85 = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
_CURVE_FIELDS = ("curve_publickey", "curve_secretkey")
# A connection file is a few hundred bytes; anything huge is not one.
_MAX_FILE = 1 << 20
# How long the liveness probe of an existing connection file may take per port.
_PROBE_TIMEOUT = 1.0


def new_key() -> bytes:
    """A fresh random HMAC key (256 bits, hex encoded as Jupyter kernels expect)."""
    return secrets.token_hex(32).encode("ascii")


def runtime_dir() -> str:
    """Jupyter's runtime directory (created if missing, mode 0700).

    Raises :class:`RuntimeDirError` naming the path and ``JUPYTER_RUNTIME_DIR``
    when it is a file, lies under a file, or cannot be written.
    """
    from jupyter_core.paths import jupyter_runtime_dir

    path = jupyter_runtime_dir()
    hint = "set JUPYTER_RUNTIME_DIR to a writable directory"
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise RuntimeDirError(
            f"Jupyter runtime directory {path} exists and is not a directory; {hint}", path
        ) from None
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno == errno.ENOTDIR:
            reason = "a parent of it is not a directory"
        raise RuntimeDirError(
            f"Cannot create the Jupyter runtime directory {path}: {reason}; {hint}", path
        ) from None
    # Exists now, but may be unusable (another user's, read-only): say so here
    # rather than with a bare OSError when the first connection file is written.
    if not os.path.isdir(path):
        raise RuntimeDirError(f"Jupyter runtime directory {path} is not a directory; {hint}", path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise RuntimeDirError(f"Jupyter runtime directory {path} is not writable; {hint}", path)
    return path


@dataclass(frozen=True)
class ConnectionInfo:
    """How to reach a kernel: the nine keys of a Jupyter connection file.

    ``key`` is kept as bytes and never shown by ``repr``. A port of 0 means
    "not bound yet" (the kernel chooses it); :meth:`from_file` only accepts
    real ports (1-65535).
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
            raise ConnectionFileError(
                f"Unknown transport {_show(self.transport)} (expected 'tcp' or 'ipc')",
                field="transport",
            )
        for name in ("key", *_CURVE_FIELDS):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    object.__setattr__(self, name, value.encode("ascii"))
                except UnicodeEncodeError:
                    raise ConnectionFileError(f"{name!r} must be ASCII", field=name) from None

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
        d["key"] = _ascii(self.key, "key")
        for name in _CURVE_FIELDS:
            value = d.pop(name)
            if value is not None and self.encrypted:
                d[name] = _ascii(value, name)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str | None = None) -> ConnectionInfo:
        """Build from a connection file's dict, checking every field.

        ``transport``, ``ip``, ``key`` and the five ports are required; ports
        may be 0 (not bound yet) here, and may be given as digit strings. The
        key may be text or bytes. Unknown keys are ignored. Raises
        :class:`ConnectionFileError` with ``.field`` set; ``path`` is only used
        in messages.
        """
        return cls(**_checked(data, path, real_ports=False))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ConnectionInfo:
        """Read a connection file; every port must be a real one (1-65535).

        A file readable by group or others is logged as a warning (the key in
        it is exposed). Raises :class:`ConnectionFileError`.
        """
        where = os.fspath(path)
        data = _load_json(where)
        return cls(**_checked(data, where, real_ports=True))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _ascii(value: bytes, name: str) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise ConnectionFileError(f"{name!r} must be ASCII", field=name) from None


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without ever blocking (a FIFO would), and stat it.

    The caller owns the returned descriptor.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _load_json(path: str) -> Any:
    try:
        fd, st = _open_regular(path)
    except OSError as e:
        raise ConnectionFileError(f"Cannot read connection file: {e.strerror or e}", path) from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)  # fdopen refuses a directory
        raise ConnectionFileError("Connection file is not a regular file", path)
    with os.fdopen(fd, "rb") as f:
        if stat.S_IMODE(st.st_mode) & 0o077:
            log.warning(
                "Connection file %s is readable by others (mode %o): its key is exposed",
                path,
                stat.S_IMODE(st.st_mode),
            )
        try:
            raw = f.read(_MAX_FILE + 1)
        except OSError as e:
            raise ConnectionFileError(
                f"Cannot read connection file: {e.strerror or e}", path
            ) from None
    if len(raw) > _MAX_FILE:
        raise ConnectionFileError("Connection file is too large to be one", path)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConnectionFileError("Connection file is not UTF-8 text", path) from None
    except ValueError as e:  # JSONDecodeError, or a number too long to convert
        # The message quotes no file content (it may hold the key): position only.
        where = (
            f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        )
        raise ConnectionFileError(f"Connection file is not valid JSON{where}", path) from None
    except RecursionError:
        raise ConnectionFileError("Connection file nests too deeply", path) from None


def _checked(data: Any, path: str | None, *, real_ports: bool) -> dict[str, Any]:
    """The constructor arguments for ``data``, every field checked."""

    def bad(message: str, name: str | None) -> ConnectionFileError:
        return ConnectionFileError(message, path, name)

    if not isinstance(data, Mapping):
        raise bad(f"Connection info must be a JSON object, not {type(data).__name__}", None)
    for name in REQUIRED_KEYS:
        if name not in data:
            raise bad(f"Connection info has no {name!r}", name)
    out: dict[str, Any] = {}

    transport = data["transport"]
    if transport not in ("tcp", "ipc"):
        raise bad(f"'transport' must be 'tcp' or 'ipc', not {_show(transport)}", "transport")
    out["transport"] = transport

    ip = data["ip"]
    if not isinstance(ip, str) or not ip or "\0" in ip:
        raise bad(f"'ip' must be a non-empty string, not {_show(ip)}", "ip")
    out["ip"] = ip

    low = 1 if real_ports else 0
    for ch in CHANNELS:
        name = f"{ch}_port"
        value = data[name]
        port: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            port = value
        elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
            port = int(value)
        if port is None or not low <= port <= 65535:
            raise bad(
                f"{name!r} must be a port number from {low} to 65535, not {_show(value)}", name
            )
        out[name] = port

    out["key"] = _secret(data["key"], "key", bad)

    scheme = data.get("signature_scheme")
    if scheme is not None:
        if not isinstance(scheme, str) or not scheme.startswith("hmac-"):
            raise bad(
                f"'signature_scheme' must be 'hmac-<digest>', not {_show(scheme)}",
                "signature_scheme",
            )
        out["signature_scheme"] = scheme

    kernel_name = data.get("kernel_name")
    if kernel_name is not None:
        if not isinstance(kernel_name, str):
            raise bad(f"'kernel_name' must be a string, not {_show(kernel_name)}", "kernel_name")
        out["kernel_name"] = kernel_name

    curve = {n: data.get(n) for n in _CURVE_FIELDS}
    for name, value in curve.items():
        if value is None:
            continue
        raw = _secret(value, name, bad)
        if len(raw) != 40 or not _Z85.issuperset(raw.decode("ascii")):
            raise bad(f"{name!r} must be a 40-character Z85 CurveZMQ key", name)
        out[name] = raw
    given = [n for n in _CURVE_FIELDS if n in out]
    if len(given) == 1:
        missing = next(n for n in _CURVE_FIELDS if n not in out)
        raise bad(f"{given[0]!r} is set but {missing!r} is missing", missing)
    return out


def _secret(value: Any, name: str, bad: Any) -> bytes:
    """A key field as ASCII bytes; errors never quote the value."""
    if isinstance(value, str):
        try:
            return value.encode("ascii")
        except UnicodeEncodeError:
            raise bad(f"{name!r} must be ASCII text", name) from None
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        if not raw.isascii():
            raise bad(f"{name!r} must be ASCII text", name)
        return raw
    raise bad(f"{name!r} must be a string, not {type(value).__name__}", name)


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
    """Pick and reserve ``count`` ipc 'ports' (path suffixes) whose socket files are free.

    Each path is reserved by creating it exclusively (an empty 0600 file), so
    two processes choosing ports for the same prefix at once never pick the
    same one. zmq's bind replaces the placeholder with the socket; the
    kernel's cleanup removes whichever of the two is left.
    """
    ports: list[int] = []
    n = 1
    while len(ports) < count:
        try:
            fd = os.open(f"{prefix}-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            ports.append(n)
        n += 1
    return ports


def rename_connection_file(old: str, new: str) -> bool:
    """Move the connection file ``old`` to ``new`` unless ``new`` exists (False then).

    A hard link then an unlink: another kernel's file is never overwritten. A
    missing ``old`` (not written yet) is fine. Other failures raise
    :class:`RuntimeDirError`.
    """
    if os.path.lexists(new):
        return False
    if not os.path.lexists(old):
        return True
    try:
        os.link(old, new)
    except FileExistsError:  # created since the check
        return False
    except OSError as e:
        raise RuntimeDirError(f"Cannot rename {old} to {new}: {e}", new) from e
    os.unlink(old)
    return True


def write_connection_file(
    info: ConnectionInfo, path: str | os.PathLike[str], *, replace_own: bool = False
) -> str:
    """Write ``info`` to ``path`` with mode 0600, atomically.

    The file is created 0600 from the start (never world-readable, not even
    for an instant) and moved into place, so a reader never sees half a file.
    Raises :class:`ConnectionFileError` if ``path`` is the connection file of
    a kernel that still listens (a stale one is replaced), or if the
    filesystem would leave the file readable by others. ``replace_own=True``
    skips the listening check: the caller knows the file is its own kernel's
    and that kernel is gone (a restart, whose old ports someone else may
    have taken meanwhile).
    """
    path = os.fspath(path)
    if not replace_own and os.path.lexists(path) and kernel_listens(path):
        raise ConnectionFileError(
            "Refusing to overwrite the connection file of a running kernel; "
            "shut that kernel down or choose another connection file",
            path,
        )
    text = json.dumps(info.to_dict(), indent=1)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kk-", suffix=".json", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o600)
            # chmod can be a silent no-op (vfat, some FUSE and network
            # filesystems): check what the file really allows before it
            # takes the connection file's name.
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise ConnectionFileError(
                f"The filesystem leaves connection files readable by others (mode {mode:o}, "
                "wanted 600); put the runtime directory elsewhere with JUPYTER_RUNTIME_DIR",
                path,
                "mode",
            )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def kernel_listens(path: str) -> bool:
    """Does the kernel named in the connection file at ``path`` still listen?

    A TCP connect to its shell or heartbeat port (an ipc socket file for ipc)
    that succeeds means yes. An unreadable or malformed file, or one whose
    ports are not bound yet, counts as no kernel.
    """
    try:
        fd, st = _open_regular(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return False
    with os.fdopen(fd, "rb") as f:
        try:
            data = json.loads(f.read(_MAX_FILE).decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return False
    if not isinstance(data, dict):
        return False
    transport, ip = data.get("transport"), data.get("ip")
    if not isinstance(ip, str) or not ip:
        return False
    for ch in ("shell", "hb"):
        port = data.get(f"{ch}_port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
            continue
        if transport == "tcp" and _tcp_accepts(ip, port):
            return True
        if transport == "ipc" and _ipc_accepts(f"{ip}-{port}"):
            return True
    return False


def channel_listens(info: ConnectionInfo, channel: str) -> bool:
    """Does something accept connections on ``channel``'s address of ``info``?

    A TCP connect (an ipc socket-file connect) that succeeds means yes; it
    blocks for at most a second, so call it off the event loop.
    """
    port = info.ports[channel]
    if not port:
        return False
    if info.transport == "tcp":
        return _tcp_accepts(info.ip, port)
    return _ipc_accepts(f"{info.ip}-{port}")


def _tcp_accepts(ip: str, port: int) -> bool:
    # A kernel bound to every interface is reached through loopback.
    host = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "::": "::1"}.get(ip, ip)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT):
            return True
    except (OSError, ValueError, UnicodeError):
        return False


def _ipc_accepts(sock_path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(_PROBE_TIMEOUT)
        try:
            s.connect(sock_path)
        except (OSError, ValueError):
            return False
        return True


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


def find_connection_file(
    filename: str = "kernel-*.json",
    path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
) -> str:
    """The absolute path of a connection file, found as jupyter_client finds it.

    ``filename`` is a path (absolute, or relative to a directory of ``path``),
    a glob, or any part of a file's name (``"1234"`` matches
    ``kernel-1234.json``). ``path`` is a directory or a list of them
    (default: the current directory, then Jupyter's runtime directory). Of
    several matches, the one accessed last wins. Raises
    :class:`ConnectionFileNotFound` (an ``OSError``, as jupyter_client's is).
    """
    if path is None:
        dirs = [".", runtime_dir()]
    elif isinstance(path, (str, os.PathLike)):
        dirs = [os.fspath(path)]
    else:
        dirs = [os.fspath(p) for p in path]
    filename = os.path.expanduser(filename)
    # An explicit name first: absolute, or relative to one of the directories.
    if os.path.isabs(filename):
        if os.path.isfile(filename):
            return filename
    else:
        for d in dirs:
            candidate = os.path.join(os.path.expanduser(d), filename)
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
    pattern = filename if glob.has_magic(filename) else f"*{glob.escape(filename)}*"
    matches: list[str] = []
    for d in dirs:
        matches.extend(glob.glob(os.path.join(os.path.expanduser(d), pattern)))
    found = sorted({os.path.abspath(m) for m in matches if os.path.isfile(m)})
    if not found:
        raise ConnectionFileNotFound(f"Could not find {filename!r} in {dirs!r}", filename)
    return max(found, key=lambda f: os.stat(f).st_atime)

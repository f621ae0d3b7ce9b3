"""Turn a kernel spec plus launch parameters into ``(connection_info, manager)``.

Two ways to get ports, chosen per kernel:

* **Handshake** (any ipykernel, i.e. argv runs ``-m ipykernel_launcher`` or
  ``-m ipykernel``): the kernel is started through a small launcher script
  with port 0 in its connection file, binds ports the OS picks, and reports
  them back over a registration socket, signed with the kernel's key. No
  window exists in which another process can take a port, so concurrent
  starts cannot collide.
* **Pre-assigned** (every other kernel): free ports are picked here, as
  jupyter_client does, and written to the connection file.

On restart the connection info of the previous run is passed back in and
reused unchanged: same ports, same key, same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import hmac
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import IO, Any

import zmq
import zmq.asyncio

from . import connection as _conn
from .connection import ConnectionInfo
from .errors import KernelDiedError, KernelStartError, KernelTimeoutError
from .kernelspec import KernelSpec
from .subproc import KernelManager

__all__ = ["launch_kernel", "uses_handshake"]

log = logging.getLogger("kernelkeeper.launch")

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ipykernel_launcher.py")


def uses_handshake(argv: Sequence[str]) -> bool:
    """True when ``argv`` starts an ipykernel we can run through our launcher."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and argv[i + 1] in ("ipykernel_launcher", "ipykernel"):
            return True
    return False


def _handshake_argv(argv: Sequence[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "-m" and out[i + 1] in ("ipykernel_launcher", "ipykernel"):
            out[i : i + 2] = [_LAUNCHER]
            break
    return out


# -- orphan protection ---------------------------------------------------------

_watch_fds: tuple[int, int] | None = None


def _watch_fd() -> int:
    """Read end of a pipe whose write end only this process holds (for life).

    Every kernel started through the launcher watches it: when this process
    dies, however it dies, the pipe reaches EOF and the kernel kills its group.
    """
    global _watch_fds
    if _watch_fds is None:
        _watch_fds = os.pipe()  # both ends close-on-exec; pass_fds hands the read end on
    return _watch_fds[0]


def _reset_after_fork() -> None:
    global _watch_fds
    _watch_fds = None  # a forked child must not keep its parent's kernels alive


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)

_libc: Any = None


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL


def _pdeathsig_preexec() -> Any:
    """A preexec_fn that has the kernel killed when its parent dies (Linux only)."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        name = ctypes.util.find_library("c")
        if not name:
            return None
        _libc = ctypes.CDLL(name, use_errno=True)
    return _set_pdeathsig


# Kernels that do not go through our launcher are started as
# ``python -I -S -c _GUARD <kernel argv>``: this forks a guard into the kernel's
# process group (double fork, so it is not the kernel's child: ipykernel-based
# kernels would wait on it at shutdown), then execs the kernel in place, same pid.
# The guard ignores the signals a manager sends a group and blocks on the watch
# pipe; when the manager dies the pipe reaches EOF and the guard removes the
# kernel's files and SIGKILLs the group: the kernel and everything it spawned.
# While the kernel lives, the manager kills the group (guard included) when it exits.
_GUARD = r"""
import os, signal, sys
fd = int(os.environ.pop("KERNELKEEPER_WATCH_FD"))
files = [f for f in os.environ.pop("KERNELKEEPER_WATCH_FILES", "").split("\n") if f]
pid = os.fork()
if pid == 0:
    if os.fork() == 0:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for i in (0, 1, 2):
            os.dup2(null, i)
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            os._exit(0)
        for f in files:
            try:
                os.unlink(f)
            except OSError:
                pass
        os.killpg(0, signal.SIGKILL)
    os._exit(0)
os.waitpid(pid, 0)
os.close(fd)
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as e:
    sys.stderr.write("kernelkeeper: cannot execute %r: %s\n" % (sys.argv[1], e))
    os._exit(127)
"""


def _guard_argv(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | os.PathLike[str] | None
) -> list[str] | None:
    """``argv`` run under the group guard, or None where it cannot be (Windows, or an
    executable that does not exist: Popen then reports that as it always did)."""
    if sys.platform == "win32" or not argv:
        return None
    exe = argv[0]
    if os.sep in exe:
        path = os.path.join(os.fspath(cwd), exe) if cwd is not None else exe
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return None
    elif shutil.which(exe, path=env.get("PATH", os.defpath)) is None:
        return None
    return [sys.executable, "-I", "-S", "-c", _GUARD, *argv]


# -- registration --------------------------------------------------------------


class _Registrar:
    """One PULL socket per event loop collecting kernels' port reports.

    It exists only while some launch waits on it: the first waiter opens it,
    the last one to leave closes the socket and awaits its receive task.
    """

    _by_loop: dict[asyncio.AbstractEventLoop, _Registrar] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.linger = 0
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{port}"
        self.waiters: dict[str, tuple[bytes, asyncio.Future[dict[str, Any]]]] = {}
        self.task = loop.create_task(self._receive())

    @classmethod
    def get(cls) -> _Registrar:
        loop = asyncio.get_running_loop()
        reg = cls._by_loop.get(loop)
        if reg is None:
            reg = cls._by_loop[loop] = cls(loop)
        return reg

    def expect(self, token: str, key: bytes) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.waiters[token] = (key, fut)
        return fut

    async def release(self, token: str) -> None:
        self.waiters.pop(token, None)
        if self.waiters or self._by_loop.get(self.loop) is not self:
            return
        del self._by_loop[self.loop]
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.sock.close()

    async def _receive(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            try:
                body, sig = frames
                report = json.loads(body)
                key, fut = self.waiters[report["token"]]
            except (ValueError, KeyError, TypeError):
                log.warning("Dropped a malformed or unexpected kernel registration")
                continue
            expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode() if key else b""
            if not hmac.compare_digest(expected, sig):
                log.warning("Dropped a kernel registration with a bad signature")
                continue
            if not fut.done():
                fut.set_result(report)


# -- launching -----------------------------------------------------------------


def _kernel_env(spec: KernelSpec, env: Mapping[str, str] | None) -> dict[str, str]:
    base = dict(os.environ if env is None else env)
    merged = {**base, **spec.format_env(base)}
    # ipykernel-based kernels poll this parent pid and exit when it changes;
    # the handshake launcher replaces that poll with its watchdog.
    merged["JPY_PARENT_PID"] = str(os.getpid())
    # Shared with jupyter_client: speeds up debugpy's import in the kernel.
    merged.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return merged


async def launch_kernel(
    spec: KernelSpec,
    *,
    kernel_id: str | None = None,
    connection_file: str | None = None,
    connection_info: ConnectionInfo | None = None,
    transport: str = "tcp",
    ip: str = "127.0.0.1",
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    extra_arguments: Sequence[str] = (),
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    independent: bool = False,
    startup_timeout: float = 60.0,
    kernel_name: str = "",
) -> tuple[ConnectionInfo, KernelManager]:
    """Start ``spec`` in a new process session; return its connection info and manager.

    ``connection_info`` (with ports) reuses a previous run's ports and key, as
    a restart must. ``env`` replaces the inherited environment (the spec's own
    ``env`` is applied on top). ``independent=True`` lets the kernel outlive
    this process. For an ipykernel the call returns once the kernel has bound
    its sockets; a kernel that dies before that raises :class:`KernelDiedError`
    with its exit code and stderr tail.
    """
    kernel_id = kernel_id or str(uuid.uuid4())
    cf = connection_file or _conn.connection_file_path(kernel_id)
    handshake = uses_handshake(spec.argv)
    reuse = connection_info is not None and connection_info.has_ports

    if reuse:
        assert connection_info is not None
        info = connection_info
    else:
        if transport == "ipc" and ip in ("", "127.0.0.1", "localhost"):
            ip = os.path.join(_conn.runtime_dir(), f"kernel-{kernel_id}-ipc")
        key = connection_info.key if connection_info and connection_info.key else _conn.new_key()
        info = ConnectionInfo(
            transport=transport, ip=ip, key=key, kernel_name=kernel_name or spec.name
        )
        if not handshake:
            ports = _conn.allocate_ports(ip) if transport == "tcp" else _conn.allocate_ipc_ports(ip)
            info = info.replace(
                **{f"{ch}_port": p for ch, p in zip(_conn.CHANNELS, ports, strict=True)}
            )
    _conn.write_connection_file(info, cf)

    argv = spec.format_argv(cf)
    argv += list(extra_arguments)
    kenv = _kernel_env(spec, env)
    pass_fds: tuple[int, ...] = ()
    preexec = None
    registrar: _Registrar | None = None
    if handshake:
        argv = _handshake_argv(argv)
        registrar = _Registrar.get()
        kenv["KERNELKEEPER_REGISTER"] = registrar.url
        kenv["KERNELKEEPER_TOKEN"] = kernel_id
        kenv.pop("JPY_PARENT_PID", None)
        if not independent:
            fd = _watch_fd()
            pass_fds = (fd,)
            kenv["KERNELKEEPER_WATCH_FD"] = str(fd)
    elif not independent:
        guarded = _guard_argv(argv, kenv, cwd)
        if guarded is not None:
            # The guard takes the kernel's whole group when this process dies.
            fd = _watch_fd()
            pass_fds = (fd,)
            kenv["KERNELKEEPER_WATCH_FD"] = str(fd)
            kenv["KERNELKEEPER_WATCH_FILES"] = "\n".join([cf, *info.ipc_paths()])
            argv = guarded
        else:
            # Fallback: PDEATHSIG takes the kernel process only, and fires when the
            # *thread* that started it ends, so it is not the first choice.
            preexec = _pdeathsig_preexec()

    capture = stderr is None
    err_r = err_w = -1
    if capture:
        err_r, err_w = os.pipe()
    reg_fut = registrar.expect(kernel_id, info.key) if registrar else None
    try:
        try:
            # Popen, not asyncio's subprocess: fork+exec takes ~1 ms and we follow the
            # exit through a pidfd, where asyncio (3.11) would add a waiter thread.
            popen = subprocess.Popen(  # noqa: ASYNC220
                argv,
                cwd=os.fspath(cwd) if cwd is not None else None,
                env=kenv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=err_w if capture else stderr,
                start_new_session=True,
                pass_fds=pass_fds,
                preexec_fn=preexec,
            )
        except FileNotFoundError as e:
            what = e.filename or argv[0]
            raise KernelStartError(
                f"Cannot start kernel {spec.name or spec.display_name!r}: "
                f"executable {what!r} not found (argv: {argv})"
            ) from e
        except OSError as e:
            raise KernelStartError(f"Cannot start kernel {spec.name!r}: {e}") from e
        finally:
            if capture:
                os.close(err_w)
    except BaseException:
        if capture:
            os.close(err_r)
        if registrar is not None:
            await registrar.release(kernel_id)
        _conn.remove_files([cf, *info.ipc_paths()])
        raise

    km = KernelManager(
        popen,
        files_to_cleanup=[cf, *info.ipc_paths()],
        kernel_id=kernel_id,
        stderr_fd=err_r if capture else None,
        stderr_sink=_stderr_sink() if capture else None,
    )
    km.start_watching()
    if reg_fut is None:
        return info, km

    assert registrar is not None
    try:
        report = await _await_registration(reg_fut, km, startup_timeout, spec)
    except BaseException:
        await km.cleanup()
        _conn.remove_files([cf, *info.ipc_paths()])
        raise
    finally:
        await registrar.release(kernel_id)
    info = info.replace(**{f"{ch}_port": int(report[f"{ch}_port"]) for ch in _conn.CHANNELS})
    # ipc kernels name their socket files after the ports they chose.
    km.files_to_cleanup = [cf, *info.ipc_paths()]
    return info, km


async def _await_registration(
    fut: asyncio.Future[dict[str, Any]], km: KernelManager, timeout: float, spec: KernelSpec
) -> dict[str, Any]:
    exited: asyncio.Future[Any] = asyncio.ensure_future(km.wait())
    try:
        await asyncio.wait({fut, exited}, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        exited.cancel()
    if fut.done():
        return fut.result()
    name = spec.name or spec.display_name
    if not await km.is_alive():
        raise KernelDiedError(f"Kernel {name!r} died during start", km.exit_code, km.stderr_tail())
    raise KernelTimeoutError(f"Kernel {name!r} did not bind its sockets within {timeout} s")


def _stderr_sink() -> IO[bytes] | None:
    stream = sys.__stderr__
    return getattr(stream, "buffer", None)

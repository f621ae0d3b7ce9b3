"""Turn a kernel spec plus launch parameters into ``(connection_info, manager)``.

Two ways to get ports, chosen per kernel:

* **Handshake** (an ipykernel run directly by a Python interpreter:
  ``python [options] -m ipykernel_launcher ...``): the kernel is started
  through a small launcher script with port 0 in its connection file, binds
  ports the OS picks, and reports them back over a registration socket,
  signed with the kernel's key. No window exists in which another process
  can take a port, so concurrent starts cannot collide.
* **Pre-assigned** (every other kernel, and ipykernels started through a
  wrapper such as ``sh -c``, ``env -i``, ``sudo`` or ``conda run``, which may
  clear the environment the report needs): free ports are picked here, as
  jupyter_client does, and written to the connection file. The launch then
  waits until the kernel has bound them (the launcher's report when it gets
  through, else its listening sockets); a kernel that exits during the start
  because a port was taken meanwhile ("Address already in use") is started
  again on fresh ports, up to three times.

An ipykernel behind a wrapper still runs through the launcher (its fast exit,
its report where the environment survives). Orphan protection: see
:mod:`kernelkeeper.guard`.

With the fork server on (:mod:`kernelkeeper.forkserver`; ``fork_server=``
here, else ``$KERNELKEEPER_FORKSERVER``), a handshake kernel is forked from
a template of its interpreter that has already imported ipykernel, and
falls back to a normal spawn wherever that cannot be done.

On restart the connection info of the previous run is passed back in and
reused unchanged: same ports, same key, same CurveZMQ keys, same file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import IO, Any

from . import connection as _conn
from . import curve, forkserver
from .connection import ConnectionInfo
from .errors import ConfigurationError, KernelDiedError, KernelStartError, KernelTimeoutError
from .guard import guard_argv, pdeathsig_preexec, watch_fd, watch_id
from .kernelspec import KernelSpec
from .registration import BindProbe, Registrar
from .subproc import KernelManager

__all__ = ["launch_kernel", "prepare_fork_server", "uses_handshake"]

log = logging.getLogger("kernelkeeper.launch")

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ipykernel_launcher.py")
_IPYKERNEL_MODULES = ("ipykernel_launcher", "ipykernel")
# Interpreter options that take the next argument as their value.
_PY_OPTS_WITH_VALUE = frozenset({"-W", "-X", "--check-hash-based-pycs"})
_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)*)?(\.exe)?", re.ASCII)
#: Starts on pre-assigned ports, in all, when a port turns out to be taken.
_PORT_TRIES = 3
#: How often a starting kernel on pre-assigned ports is checked for its listeners.
_PROBE_INTERVAL = 0.02


def uses_handshake(argv: Sequence[str]) -> bool:
    """True when ``argv`` starts an ipykernel (``-m ipykernel_launcher`` or
    ``-m ipykernel``, directly or through a wrapper): it runs through our launcher."""
    return _ipykernel_module_index(argv) is not None


def _ipykernel_module_index(argv: Sequence[str]) -> int | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and argv[i + 1] in _IPYKERNEL_MODULES:
            return i
    return None


def _is_python(exe: str) -> bool:
    """Is ``exe`` a Python interpreter (by name, or because it is this one)?"""
    if _PYTHON_NAME.fullmatch(os.path.basename(exe)):
        return True
    path = exe if os.sep in exe else shutil.which(exe)
    if not path:
        return False
    real = os.path.realpath(path)
    if sys.executable and real == os.path.realpath(sys.executable):
        return True
    return _PYTHON_NAME.fullmatch(os.path.basename(real)) is not None


def _binds_port_zero(argv: Sequence[str]) -> bool:
    """Can the kernel take the handshake? Only when the interpreter itself runs
    ipykernel: a wrapper in between may clear the environment the report needs."""
    if not argv or not _is_python(argv[0]):
        return False
    i = 1
    while i < len(argv) - 1:
        arg = argv[i]
        if arg == "-m":
            return argv[i + 1] in _IPYKERNEL_MODULES
        if not arg.startswith("-") or arg in ("-", "-c"):
            return False
        i += 2 if arg in _PY_OPTS_WITH_VALUE else 1
    return False


def _launcher_argv(argv: Sequence[str]) -> list[str]:
    out = list(argv)
    i = _ipykernel_module_index(out)
    if i is not None:
        out[i : i + 2] = [_LAUNCHER]
    return out


def _kernel_env(spec: KernelSpec, env: Mapping[str, str] | None) -> dict[str, str]:
    base = dict(os.environ if env is None else env)
    merged = {**base, **spec.format_env(base)}
    # ipykernel-based kernels poll this parent pid and exit when it changes;
    # the handshake launcher replaces that poll with its watchdog.
    merged["JPY_PARENT_PID"] = str(os.getpid())
    # Shared with jupyter_client: speeds up debugpy's import in the kernel.
    merged.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return merged


def _curve_keys(
    policy: str, spec: KernelSpec, transport: str, previous: ConnectionInfo | None
) -> tuple[bytes, bytes] | None:
    """The kernel's CurveZMQ keypair under ``policy``, or None for no encryption."""
    if policy not in curve.POLICIES:
        raise ConfigurationError(
            f"transport_encryption must be one of {', '.join(curve.POLICIES)}, not {policy!r}"
        )
    if previous is not None and previous.encrypted:
        assert previous.curve_publickey is not None and previous.curve_secretkey is not None
        return previous.curve_publickey, previous.curve_secretkey  # a restart keeps them
    if policy == "disabled":
        return None
    why = []
    if transport != "tcp":
        why.append(f"the transport is {transport!r} (CurveZMQ needs tcp)")
    if not curve.available():
        why.append("libzmq was built without CurveZMQ")
    if not curve.supports_curve(spec.metadata):
        why.append('the kernelspec does not declare "supported_encryption": ["curve"]')
    if not why:
        return curve.new_keypair()
    if policy == "required":
        name = spec.name or spec.display_name
        raise ConfigurationError(
            f"transport_encryption='required' but kernel {name!r} cannot be encrypted: "
            + "; ".join(why)
        )
    return None


def _first_info(
    spec: KernelSpec,
    previous: ConnectionInfo | None,
    kernel_id: str,
    transport: str,
    ip: str,
    kernel_name: str,
    policy: str,
) -> ConnectionInfo:
    if previous is not None and previous.has_ports:
        _curve_keys(policy, spec, previous.transport, previous)  # validates the policy
        return previous
    keys = _curve_keys(policy, spec, transport, previous)
    if transport == "ipc" and ip in ("", "127.0.0.1", "localhost"):
        ip = os.path.join(_conn.runtime_dir(), f"kernel-{kernel_id}-ipc")
    key = previous.key if previous and previous.key else _conn.new_key()
    info = ConnectionInfo(transport=transport, ip=ip, key=key, kernel_name=kernel_name)
    if keys is not None:
        info = info.replace(curve_publickey=keys[0], curve_secretkey=keys[1])
    return info


def _with_free_ports(info: ConnectionInfo) -> ConnectionInfo:
    if info.transport == "tcp":
        ports = _conn.allocate_ports(info.ip)
    else:
        ports = _conn.allocate_ipc_ports(info.ip)
    return info.replace(**{f"{ch}_port": p for ch, p in zip(_conn.CHANNELS, ports, strict=True)})


def _port_taken(stderr_tail: str) -> bool:
    return "Address already in use" in stderr_tail or "EADDRINUSE" in stderr_tail


class _PortTaken(Exception):
    """One of the kernel's pre-assigned ports was taken by another process at start."""

    def __init__(self, error: KernelDiedError | KernelStartError) -> None:
        super().__init__(str(error))
        self.error = error


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
    transport_encryption: str = "disabled",
    fork_server: bool | None = None,
) -> tuple[ConnectionInfo, KernelManager]:
    """Start ``spec`` in a new process session; return its connection info and manager.

    ``connection_info`` (with ports) reuses a previous run's ports, key and
    CurveZMQ keys, as a restart must. ``env`` replaces the inherited
    environment (the spec's own ``env`` is applied on top). ``independent=True``
    lets the kernel outlive this process. ``transport_encryption`` is one of
    :data:`kernelkeeper.curve.POLICIES`: ``"auto"`` encrypts a tcp kernel whose
    spec declares CurveZMQ support, ``"required"`` raises
    :class:`ConfigurationError` where that is not possible. ``fork_server``
    forks the kernel from a template (True) or never (False); None follows
    :func:`kernelkeeper.forkserver.enabled`.

    The call returns once the kernel has bound its sockets (on platforms
    without ``/proc``, a kernel on pre-assigned ports returns at once); a
    kernel that dies before that raises :class:`KernelDiedError` with its exit
    code and stderr tail, one that takes longer than ``startup_timeout``
    :class:`KernelTimeoutError`. A collision on pre-assigned ports is only
    detected while stderr is captured (``stderr=None``).
    """
    kernel_id = kernel_id or str(uuid.uuid4())
    cf = connection_file or _conn.connection_file_path(kernel_id)
    argv = spec.format_argv(cf) + list(extra_arguments)
    launch = _Launch(
        spec=spec,
        kernel_id=kernel_id,
        cf=cf,
        argv=argv,
        handshake=_binds_port_zero(argv),
        env=_kernel_env(spec, env),
        cwd=cwd,
        stdout=stdout,
        stderr=stderr,
        independent=independent,
        startup_timeout=startup_timeout,
        fork_server=fork_server,
    )
    info = _first_info(
        spec,
        connection_info,
        kernel_id,
        transport,
        ip,
        kernel_name or spec.name,
        transport_encryption,
    )
    for attempt in range(1, _PORT_TRIES + 1):
        if not info.has_ports and not launch.handshake:
            info = _with_free_ports(info)
        try:
            # A restart, or a retry, rewrites the kernel's own file: its old
            # ports may be taken by someone else now, which is no live kernel.
            own = attempt > 1 or (connection_info is not None and connection_info.has_ports)
            return await launch.start(info, own_file=own)
        except _PortTaken as taken:
            if attempt == _PORT_TRIES:
                raise taken.error from None
            log.warning(
                "Kernel %r could not bind its ports (another process took one); "
                "starting it again on fresh ports (%d of %d)",
                spec.name or spec.display_name,
                attempt + 1,
                _PORT_TRIES,
            )
            info = info.replace(**{f"{ch}_port": 0 for ch in _conn.CHANNELS})
    raise AssertionError("unreachable")  # pragma: no cover


class _Launch:
    """One kernel's start parameters; :meth:`start` is one attempt."""

    def __init__(
        self,
        *,
        spec: KernelSpec,
        kernel_id: str,
        cf: str,
        argv: list[str],
        handshake: bool,
        env: dict[str, str],
        cwd: str | os.PathLike[str] | None,
        stdout: int | IO[Any] | None,
        stderr: int | IO[Any] | None,
        independent: bool,
        startup_timeout: float,
        fork_server: bool | None = None,
    ) -> None:
        self.spec = spec
        self.kernel_id = kernel_id
        self.cf = cf
        self.argv = argv
        self.handshake = handshake
        self.ipykernel = uses_handshake(argv)
        self.env = env
        self.cwd = cwd
        self.stdout = stdout
        self.stderr = stderr
        self.independent = independent
        self.startup_timeout = startup_timeout
        self.name = spec.name or spec.display_name
        # Only a kernel the interpreter runs directly can be forked from a template
        # of it, and only one bound to this process (the template dies with it).
        self.forkable = (
            handshake
            and not independent
            and forkserver.enabled(fork_server)
            and forkserver.supported()
        )

    async def _fork(
        self, argv: list[str], kenv: dict[str, str], err: int | IO[Any] | None
    ) -> forkserver.ForkedProcess | None:
        """The kernel forked from its recipe's template, or None: spawn it."""
        key, interpreter = _recipe(self.spec, argv, kenv)
        i = len(interpreter)
        return await forkserver.spawn(
            key=key,
            interpreter=interpreter,
            args=argv[i + 1 :],
            env=kenv,
            template_env=_kernel_env(self.spec, None),
            cwd=self.cwd,
            stdout=self.stdout,
            stderr=err,
        )

    def _command(
        self, info: ConnectionInfo, token: str, url: str
    ) -> tuple[list[str], dict[str, str], tuple[int, ...], Any]:
        argv = list(self.argv)
        kenv = dict(self.env)
        pass_fds: tuple[int, ...] = ()
        preexec = None
        if self.ipykernel:
            argv = _launcher_argv(argv)
            kenv["KERNELKEEPER_REGISTER"] = url
            kenv["KERNELKEEPER_TOKEN"] = token
            kenv.pop("JPY_PARENT_PID", None)
        if self.independent:
            return argv, kenv, pass_fds, preexec
        if self.handshake:
            # The launcher's watchdog thread holds the read end.
            pass_fds = (watch_fd(),)
            kenv["KERNELKEEPER_WATCH_FD"] = watch_id()
            return argv, kenv, pass_fds, preexec
        guarded = guard_argv(argv, kenv, self.cwd)
        if guarded is not None:
            # The guard takes the kernel's whole group when this process dies; it
            # holds the read end itself, so wrappers that close fds cannot lose it.
            pass_fds = (watch_fd(),)
            kenv["KERNELKEEPER_WATCH_FD"] = str(pass_fds[0])
            kenv["KERNELKEEPER_WATCH_FILES"] = "\n".join([self.cf, *info.ipc_paths()])
            return guarded, kenv, pass_fds, preexec
        # Fallback: PDEATHSIG takes the kernel process only, and fires when the
        # *thread* that started it ends, so it is not the first choice.
        return argv, kenv, pass_fds, pdeathsig_preexec()

    async def start(
        self, info: ConnectionInfo, *, own_file: bool = False
    ) -> tuple[ConnectionInfo, KernelManager]:
        """Write the connection file, start the kernel, wait until it has bound.

        ``own_file``: the file is this kernel's own from an earlier run or attempt.
        """
        cf = self.cf
        _conn.write_connection_file(info, cf, replace_own=own_file)
        registrar = Registrar.get() if self.ipykernel else None
        token = f"{self.kernel_id}/{uuid.uuid4().hex[:12]}"
        argv, kenv, pass_fds, preexec = self._command(
            info, token, registrar.url if registrar else ""
        )
        capture = self.stderr is None
        err_r = err_w = -1
        if capture:
            err_r, err_w = os.pipe()
        reg_fut = registrar.expect(token, info.key) if registrar else None
        try:
            try:
                forked = None
                if self.forkable and _LAUNCHER in argv:
                    forked = await self._fork(argv, kenv, err_w if capture else self.stderr)
                # Popen, not asyncio's subprocess: fork+exec takes ~1 ms and we follow the
                # exit through a pidfd, where asyncio (3.11) would add a waiter thread.
                popen = forked or subprocess.Popen(  # noqa: ASYNC220
                    argv,
                    cwd=os.fspath(self.cwd) if self.cwd is not None else None,
                    env=kenv,
                    stdin=subprocess.DEVNULL,
                    stdout=self.stdout,
                    stderr=err_w if capture else self.stderr,
                    start_new_session=True,
                    pass_fds=pass_fds,
                    preexec_fn=preexec,
                )
            except FileNotFoundError as e:
                what = e.filename or argv[0]
                raise KernelStartError(
                    f"Cannot start kernel {self.name!r}: "
                    f"executable {what!r} not found (argv: {argv})"
                ) from e
            except OSError as e:
                raise KernelStartError(f"Cannot start kernel {self.spec.name!r}: {e}") from e
            finally:
                if capture:
                    os.close(err_w)
        except BaseException:
            if capture:
                os.close(err_r)
            if registrar is not None:
                await registrar.release(token)
            _conn.remove_files([cf, *info.ipc_paths()])
            raise

        km = KernelManager(
            popen,
            files_to_cleanup=[cf, *info.ipc_paths()],
            kernel_id=self.kernel_id,
            stderr_fd=err_r if capture else None,
            stderr_sink=_stderr_sink() if capture else None,
        )
        km.start_watching()
        probe = None
        if not self.handshake and BindProbe.supported(info):
            probe = BindProbe(popen.pid, info)
        if reg_fut is None and probe is None:
            return info, km
        try:
            report = await self._await_bound(km, reg_fut, probe)
        except BaseException:
            await km.cleanup()
            _conn.remove_files([cf, *info.ipc_paths()])
            raise
        finally:
            if registrar is not None:
                await registrar.release(token)
        if self.forkable and not isinstance(km.popen, forkserver.ForkedProcess):
            forkserver.start_templates()  # after this start: it must not compete with it
        if report is not None:
            info = info.replace(
                **{f"{ch}_port": int(report[f"{ch}_port"]) for ch in _conn.CHANNELS}
            )
            # ipc kernels name their socket files after the ports they chose.
            km.files_to_cleanup = [cf, *info.ipc_paths()]
        return info, km

    async def _await_bound(
        self,
        km: KernelManager,
        reg_fut: asyncio.Future[dict[str, Any]] | None,
        probe: BindProbe | None,
    ) -> dict[str, Any] | None:
        """The launcher's report, or None once ``probe`` sees the ports bound.

        Raises :class:`_PortTaken`, :class:`KernelDiedError` or
        :class:`KernelTimeoutError`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        exited: asyncio.Future[Any] = asyncio.ensure_future(km.wait())
        waits: set[asyncio.Future[Any]] = {exited} if reg_fut is None else {exited, reg_fut}
        try:
            while True:
                if reg_fut is not None and reg_fut.done():
                    return reg_fut.result()
                if exited.done():
                    break
                if probe is not None and probe():
                    return None
                if probe is not None and probe.taken:
                    raise _PortTaken(
                        KernelStartError(
                            f"Kernel {self.name!r} could not bind port(s) "
                            f"{', '.join(map(str, probe.taken))}: another process listens there"
                        )
                    )
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise KernelTimeoutError(
                        f"Kernel {self.name!r} did not bind its sockets "
                        f"within {self.startup_timeout} s"
                    )
                # A poll with a deadline, only while a pre-assigned kernel starts:
                # it has no other way to tell us it is listening.
                step = min(_PROBE_INTERVAL, remaining) if probe is not None else remaining
                await asyncio.wait(waits, timeout=step, return_when="FIRST_COMPLETED")
        finally:
            exited.cancel()
        died = KernelDiedError(
            f"Kernel {self.name!r} died during start", km.exit_code, km.stderr_tail()
        )
        if _port_taken(km.stderr_tail(lines=200)):
            raise _PortTaken(died)
        raise died


def _recipe(spec: KernelSpec, argv: Sequence[str], env: Mapping[str, str]) -> tuple[str, list[str]]:
    """The fork-server recipe of a launcher argv: its key, and the interpreter part."""
    interpreter = list(argv[: list(argv).index(_LAUNCHER)])
    return forkserver.recipe_key(interpreter, spec.argv, spec.env, env.get("PATH")), interpreter


async def prepare_fork_server(spec: KernelSpec, fork_server: bool | None = None) -> bool:
    """Start the fork-server template ``spec``'s kernels would be forked from, now,
    and wait until it can fork (a pool or a server that knows kernels will come).

    False where the kernels would not be forked (the switch is off, the kernel
    is not an ipykernel run by its interpreter, the template failed).
    """
    argv = spec.format_argv("kernel.json")  # the file does not count in the recipe
    if not (forkserver.enabled(fork_server) and _binds_port_zero(argv)):
        return False
    env = _kernel_env(spec, None)
    key, interpreter = _recipe(spec, _launcher_argv(argv), env)
    return await forkserver.prepare(key, interpreter, env)


def _stderr_sink() -> IO[bytes] | None:
    stream = sys.__stderr__
    return getattr(stream, "buffer", None)

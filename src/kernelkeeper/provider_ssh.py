"""Kernels on SSH hosts: the ``ssh/<host>/<spec>`` kernel types.

``ssh/gpu1/python3`` runs the kernelspec ``python3`` on the host ``gpu1``,
with the options of ``kernelkeeper_remote.json``'s ``"ssh"`` section and its
``"hosts": {"gpu1": {...}}`` entry (hostname, port, user, key, known_hosts,
python, tunnel; see :mod:`kernelkeeper.remote_config`), and those given to
the start (``remote_options=``). Needs asyncssh (``pip install
kernelkeeper[ssh]``), imported only when such a kernel starts.

One SSH connection per kernel carries everything: the kernel's command,
whose stdin brings the node its settings (the key included: never the
remote command line or environment) and then stays open, so the kernel's
whole process group is killed on the host as soon as the connection drops;
the signals (``kill -SIG -- -<pgid>``, the kernel's process group); and,
with ``tunnel``, the registration and the kernel's five ports, forwarded
through the connection for networks where this host cannot reach the other
directly. The kernel's exit arrives as the command's exit status, pushed by
the server: nothing is polled, and keepalives notice a dead link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .connection import ConnectionInfo
from .errors import ConfigurationError, KernelStartError, NoSuchKernel
from .finder import KernelProvider, KernelSpecProvider
from .kernelspec import KernelSpec
from .registration import Registrar
from .remote import RemoteKernelManager, launcher_script, remote_python
from .remote_config import SshOptions, load_config, ssh_options
from .remote_start import RemoteStart

__all__ = ["SshKernelManager", "SshProvider", "launch_ssh"]

log = logging.getLogger("kernelkeeper.ssh")

_TAIL_LINES = 200
_CLOSE_TIMEOUT = 10.0


def _asyncssh() -> Any:
    try:
        import asyncssh
    except ImportError as e:
        raise ConfigurationError(
            "SSH kernels need asyncssh: pip install 'kernelkeeper[ssh]'"
        ) from e
    return asyncssh


class SshKernelManager(RemoteKernelManager):
    """The process-level manager of a kernel on an SSH host, through its connection."""

    def __init__(
        self,
        info: ConnectionInfo,
        *,
        conn: Any,
        process: Any,
        pgid: int,
        listeners: Sequence[Any],
        stderr_task: asyncio.Task[None] | None,
        tail: list[str],
        kernel_id: str,
        pid: int,
        hostname: str,
        files_to_cleanup: Sequence[str] = (),
    ) -> None:
        super().__init__(
            info, kernel_id=kernel_id, pid=pid, hostname=hostname, files_to_cleanup=files_to_cleanup
        )
        #: The kernel's process group on the host.
        self.pgid = pgid
        self._conn = conn
        self._process = process
        self._listeners = list(listeners)
        self._stderr_task = stderr_task
        self._tail = tail

    async def _follow(self) -> tuple[int, str]:
        # The server pushes the command's exit; a lost connection closes it too.
        await self._process.wait_closed()
        if self._stderr_task is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
        status = self._process.exit_status
        sig = self._process.exit_signal
        if sig:
            import signal as _signal

            name = sig[0]
            try:
                num = int(_signal.Signals["SIG" + name])
            except KeyError:
                num = int(_signal.SIGKILL)
            return -num, f"killed by SIG{name} on {self.hostname}"
        if status is None or status == -1:
            return 255, f"the SSH connection to {self.hostname} was lost"
        return int(status), f"exited on {self.hostname} with status {status}"

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines the kernel wrote to stderr on its host, and how it ended."""
        text = "\n".join(self._tail[-lines:])
        return f"{text}\n{self.end_reason}".strip() if self.end_reason else text

    async def _send_signal(self, signum: int) -> None:
        await self._run(f"kill -{int(signum)} -- -{self.pgid}")

    async def _terminate(self) -> None:
        await self._run(f"kill -9 -- -{self.pgid}")

    async def _run(self, command: str) -> None:
        asyncssh = _asyncssh()
        try:
            await asyncio.wait_for(self._conn.run(command, check=False), _CLOSE_TIMEOUT)
        except (asyncssh.Error, OSError, asyncio.TimeoutError) as e:
            # No connection: the host's side has killed the group itself already.
            log.info("%r on %s failed: %s", command, self.hostname, e)

    async def _release(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._process.close()
        self._conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.wait_closed(), _CLOSE_TIMEOUT)
        task, self._stderr_task = self._stderr_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class SshProvider(KernelProvider):
    """Kernels on SSH hosts, named ``<host>/<spec>``; the hosts listed are those
    of the config file's ``"ssh": {"hosts": {...}}``."""

    id = "ssh"

    def find_kernels(self) -> Iterator[tuple[str, KernelSpec]]:
        hosts = load_config().get("ssh", {}).get("hosts", {})
        if not hosts:
            return
        specs = list(KernelSpecProvider().find_kernels())
        for host in sorted(hosts):
            for name, spec in specs:
                yield f"{host}/{name}", spec

    def get_spec(self, name: str) -> KernelSpec:
        _host, spec_name = self._split(name)
        # Installed kernelspecs only (see SlurmProvider.get_spec).
        return KernelSpecProvider().get_spec(spec_name)

    @staticmethod
    def _split(name: str) -> tuple[str, str]:
        host, _, spec_name = name.partition("/")
        if not host or not spec_name:
            raise NoSuchKernel(name, [])
        return host, spec_name

    async def launch(self, name: str, **params: Any) -> tuple[ConnectionInfo, SshKernelManager]:
        """Start the kernel ``<host>/<spec>``; returns once it has registered."""
        host, _spec_name = self._split(name)
        return await launch_ssh(self.get_spec(name), host, **params)


async def _connect(options: SshOptions) -> Any:
    asyncssh = _asyncssh()
    kwargs: dict[str, Any] = {
        "port": options.port,
        "known_hosts": options.known_hosts,
        "keepalive_interval": options.keepalive_interval,
        "keepalive_count_max": 3,
        "connect_timeout": options.connect_timeout,
    }
    if options.user:
        kwargs["username"] = options.user
    if options.key:
        kwargs["client_keys"] = [options.key]
    try:
        return await asyncssh.connect(options.hostname, **kwargs)
    except (asyncssh.Error, OSError, asyncio.TimeoutError) as e:
        raise KernelStartError(
            f"Cannot connect to {options.hostname}:{options.port} over SSH: {e}"
        ) from e


async def launch_ssh(
    spec: KernelSpec,
    host: str,
    *,
    kernel_id: str | None = None,
    connection_file: str | None = None,
    connection_info: ConnectionInfo | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    extra_arguments: Sequence[str] = (),
    startup_timeout: float = 60.0,
    kernel_name: str = "",
    transport_encryption: str = "disabled",
    remote_options: Mapping[str, Any] | None = None,
    **_ignored: Any,
) -> tuple[ConnectionInfo, SshKernelManager]:
    """Run ``spec`` on ``host``; ``(connection_info, manager)`` once it registered.

    As :func:`kernelkeeper.provider_slurm.launch_slurm`: a restart keeps the
    key, local-only launch arguments are ignored.
    """
    options = ssh_options(host, remote_options)
    asyncssh = _asyncssh()
    start = RemoteStart.new(
        spec, kernel_id, connection_file, connection_info, kernel_name, transport_encryption
    )
    conn = await _connect(options)
    listeners: list[Any] = []
    process: Any = None
    registrar: Registrar | None = None
    tail: list[str] = []
    stderr_task: asyncio.Task[None] | None = None
    try:
        if options.tunnel:
            registrar = Registrar.get("127.0.0.1")
            back = await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", registrar.port)
            listeners.append(back)
            register_url = f"tcp://127.0.0.1:{back.get_port()}"
            kernel_ip: str | None = "127.0.0.1"
        else:
            registrar = Registrar.get(options.registration_address)
            ours = options.connect_address or conn.get_extra_info("sockname")[0]
            register_url = registrar.url_for(ours)
            kernel_ip = None
        settings = start.settings(
            register_url,
            env=env,
            cwd=cwd,
            extra_arguments=extra_arguments,
            ip=kernel_ip,
            watch_stdin=True,
        )
        report_fut = registrar.expect(start.token, start.info.key)
        # No settings in the script: they go on its stdin, the SSH channel (below).
        script = launcher_script(remote_python(spec, options.python))
        process = await conn.create_process(script, encoding=None)
        stderr_task = asyncio.get_running_loop().create_task(_read_tail(process.stderr, tail))
        process.stdin.write(json.dumps(settings).encode() + b"\n")
        ended = asyncio.ensure_future(process.wait_closed())

        async def why_late() -> str:
            return f"no report from {options.hostname}" + _tail_text(tail)

        async def why_ended() -> str:
            return f"exit status {process.exit_status} on {options.hostname}" + _tail_text(tail)

        report = await start.report(
            report_fut, ended, timeout=startup_timeout, why_late=why_late, why_ended=why_ended
        )
        info = start.reported(report)
        if options.tunnel:
            local_ports = {}
            for ch, port in info.ports.items():
                fwd = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", port)
                listeners.append(fwd)
                local_ports[f"{ch}_port"] = fwd.get_port()
            info = info.replace(ip="127.0.0.1", **local_ports)
        start.write(info)
    except BaseException as e:
        await asyncio.shield(_abandon(conn, process, listeners, stderr_task))
        if isinstance(e, (asyncssh.Error, OSError)):
            raise KernelStartError(f"Kernel {start.name!r} on {options.hostname}: {e}") from e
        raise
    finally:
        if registrar is not None:
            await registrar.release(start.token)
    km = SshKernelManager(
        info,
        conn=conn,
        process=process,
        pgid=int(report.get("pgid", report.get("pid", 0))),
        listeners=listeners,
        stderr_task=stderr_task,
        tail=tail,
        **start.manager_args(report, options.hostname),
    )
    km.start_watching()
    return info, km


def _tail_text(tail: list[str]) -> str:
    return ("\n--- stderr on the host (tail) ---\n" + "\n".join(tail[-20:])) if tail else ""


async def _read_tail(stream: Any, tail: list[str]) -> None:
    """Keep the last lines of the remote stderr (they explain a failed start)."""
    while True:
        line = await stream.readline()
        if not line:
            return
        tail.append(line.decode(errors="replace").rstrip("\n"))
        del tail[:-_TAIL_LINES]


async def _abandon(
    conn: Any, process: Any, listeners: Sequence[Any], stderr_task: asyncio.Task[None] | None
) -> None:
    """A start that failed: closing the connection ends the kernel's group on the host."""
    for listener in listeners:
        listener.close()
    if process is not None:
        process.close()
    conn.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.wait_closed(), _CLOSE_TIMEOUT)
    if stderr_task is not None:
        stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await stderr_task

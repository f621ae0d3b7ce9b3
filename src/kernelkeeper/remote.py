"""What kernels on other machines share: the node's start settings, the wait
for the registration, and the base of their process-level managers.

A remote kernel is started by ``_remote_launcher.py`` on its node (see
there): it binds its ports on the node and reports them, signed with the
kernel's key, to a :class:`~kernelkeeper.registration.Registrar` bound on an
address the node can reach. So no port is picked on the wrong host and no
filesystem needs to be shared.

:class:`RemoteKernelManager` is the :class:`~kernelkeeper.managerabc.KernelManagerABC`
of such a kernel. Where the remote side cannot push the kernel's exit (a
Slurm job), the subclass polls gently (seconds) and a heartbeat pinger asks
for an early poll as soon as the kernel stops answering, so a death is
noticed within about a heartbeat, not a poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import zmq
import zmq.asyncio

from . import connection as _conn
from . import curve
from .connection import ConnectionInfo
from .errors import ConfigurationError, KernelDiedError, KernelSpecError, KernelTimeoutError
from .kernelspec import KernelSpec
from .managerabc import KernelManagerABC

__all__ = [
    "HeartbeatPinger",
    "RemoteKernelManager",
    "curve_keys",
    "launcher_script",
    "launcher_sources",
    "node_settings",
    "remote_python",
    "reported_info",
]

log = logging.getLogger("kernelkeeper.remote")

_HERE = os.path.dirname(os.path.abspath(__file__))
_IPYKERNEL_MODULES = ("ipykernel_launcher", "ipykernel")
_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)*)?", re.ASCII)


def launcher_sources() -> dict[str, str]:
    """``{file name: source}`` of the scripts a node runs to start a kernel."""
    out = {}
    for name in ("_ipykernel_launcher.py", "_remote_launcher.py"):
        with open(os.path.join(_HERE, name), encoding="utf-8") as f:
            out[name] = f.read()
    return out


def launcher_script(python: str, settings: Mapping[str, Any] | None = None) -> str:
    """A shell script that unpacks the launchers into a private directory and
    runs ``_remote_launcher.py`` with ``python``.

    With ``settings``, they reach the launcher's stdin as a here-document (a
    batch job has no stdin of its own); without, the launcher reads the
    script's stdin (an SSH channel: the settings line, then EOF when the link
    drops).
    """
    mark = f"KK_EOF_{uuid.uuid4().hex}"
    lines = [
        "umask 077",
        'd=$(mktemp -d "${TMPDIR:-/tmp}/kk-remote-XXXXXXXX") || exit 1',
    ]
    for name, source in launcher_sources().items():
        lines += [f"cat > \"$d/{name}\" <<'{mark}'", source.rstrip("\n"), mark]
    py = shlex.quote(python)
    lines += [
        f"if ! command -v {py} >/dev/null 2>&1; then",
        f'  echo "kernelkeeper: no interpreter {py} on $(hostname)" >&2; rm -rf "$d"; exit 127',
        "fi",
    ]
    if settings is None:
        lines.append(f'exec {py} "$d/_remote_launcher.py"')
    else:
        lines += [
            f"exec {py} \"$d/_remote_launcher.py\" <<'{mark}'",
            json.dumps(dict(settings), separators=(",", ":")),
            mark,
        ]
    return "\n".join(lines) + "\n"


def _ipykernel_args(argv: Sequence[str]) -> list[str] | None:
    """The arguments after ``-m ipykernel_launcher`` (minus ``-f {connection_file}``),
    or None when ``argv`` does not run an ipykernel."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and argv[i + 1] in _IPYKERNEL_MODULES:
            rest = list(argv[i + 2 :])
            out: list[str] = []
            skip = False
            for a in rest:
                if skip:
                    skip = False
                    continue
                if a in ("-f", "--f"):
                    skip = True
                    continue
                if "{connection_file}" in a:
                    continue
                out.append(a)
            return out
    return None


def remote_python(spec: KernelSpec, configured: str | None) -> str:
    """The interpreter that runs the launcher on the node.

    The configured one, else the spec's argv[0] when it is a Python (a bare
    ``python``/``python3`` means this interpreter's path: clusters usually
    share their software installation), else ``python3``.
    """
    if configured:
        return configured
    exe = spec.argv[0] if spec.argv else ""
    base = os.path.basename(exe)
    if _PYTHON_NAME.fullmatch(base):
        return exe if os.sep in exe else sys.executable
    return "python3"


def curve_keys(
    policy: str, spec: KernelSpec, previous: ConnectionInfo | None
) -> tuple[bytes, bytes] | None:
    """The CurveZMQ keypair to offer the node under ``policy``, or None.

    A restart keeps the previous keys. Whether the kernel uses them is up to
    the node's ipykernel (7.4 or later): its report says so, see
    :func:`reported_info`.
    """
    if policy not in curve.POLICIES:
        raise ConfigurationError(
            f"transport_encryption must be one of {', '.join(curve.POLICIES)}, not {policy!r}"
        )
    if previous is not None and previous.encrypted:
        assert previous.curve_publickey is not None and previous.curve_secretkey is not None
        return previous.curve_publickey, previous.curve_secretkey
    if policy == "disabled":
        return None
    if not curve.available():
        if policy == "required":
            raise ConfigurationError(
                "transport_encryption='required' but libzmq was built without CurveZMQ"
            )
        return None
    if policy == "auto" and not curve.supports_curve(spec.metadata):
        return None
    return curve.new_keypair()


def node_settings(
    spec: KernelSpec,
    info: ConnectionInfo,
    *,
    token: str,
    register_url: str,
    kernel_name: str,
    previous: ConnectionInfo | None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    extra_arguments: Sequence[str] = (),
    ip: str | None = None,
    watch_stdin: bool = False,
    keys: tuple[bytes, bytes] | None = None,
) -> dict[str, Any]:
    """The settings (key included) the node's launcher reads from its stdin."""
    if info.transport != "tcp":
        raise KernelSpecError(f"Remote kernels use tcp, not {info.transport!r}")
    args = _ipykernel_args(spec.argv)
    merged_env = {**spec.format_env({}), **(env or {})}
    settings: dict[str, Any] = {
        "key": info.key.decode("ascii"),
        "signature_scheme": info.signature_scheme,
        "token": token,
        "register": register_url,
        "kernel_name": kernel_name,
        "env": merged_env,
        "cwd": os.fspath(cwd) if cwd is not None else None,
        "ip": ip,
        "watch_stdin": watch_stdin,
        "new_session": True,
        # A restart asks for the same ports; the node uses them if they are free.
        "ports": (
            {f"{ch}_port": p for ch, p in previous.ports.items()}
            if previous is not None and previous.has_ports
            else {}
        ),
    }
    if keys is not None:
        settings["curve_publickey"] = keys[0].decode("ascii")
        settings["curve_secretkey"] = keys[1].decode("ascii")
    if args is not None:
        settings["mode"] = "ipykernel"
        settings["argv"] = [*args, *extra_arguments]
    else:
        settings["mode"] = "argv"
        settings["argv"] = [*spec.argv, *extra_arguments]
    return settings


def new_token(kernel_id: str) -> str:
    """A registration token: the kernel's id plus a nonce for this one start."""
    return f"{kernel_id}/{uuid.uuid4().hex[:12]}"


def reported_info(
    info: ConnectionInfo,
    report: Mapping[str, Any],
    *,
    keys: tuple[bytes, bytes] | None = None,
    policy: str = "disabled",
) -> ConnectionInfo:
    """``info`` with the address and ports a node reported, and the CurveZMQ
    keys when the kernel took them. A kernel that could not while ``policy``
    is ``"required"`` raises :class:`ConfigurationError` (the caller ends it)."""
    out = info.replace(
        ip=str(report.get("ip") or info.ip),
        **{f"{ch}_port": int(report[f"{ch}_port"]) for ch in _conn.CHANNELS},
    )
    if keys is None:
        return out
    if report.get("curve"):
        return out.replace(curve_publickey=keys[0], curve_secretkey=keys[1])
    if policy == "required":
        raise ConfigurationError(
            f"transport_encryption='required' but the kernel on {report.get('hostname')!r} "
            "cannot be encrypted (its ipykernel is older than 7.4)"
        )
    return out


class HeartbeatPinger:
    """Pings a kernel's heartbeat channel (a REQ socket, remade after a miss)."""

    def __init__(self, url: str, info: ConnectionInfo) -> None:
        self.url = url
        self.info = info
        self._ctx = zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.linger = 0
            if self.info.encrypted:
                from . import curve

                curve.configure_client(sock, self.info)
            sock.connect(self.url)
            self._sock = sock
        return self._sock

    async def beat(self, timeout: float) -> bool:
        """Did the kernel answer a ping within ``timeout`` seconds?"""
        sock = self._socket()
        try:
            await sock.send(b"ping")
            if await sock.poll(int(timeout * 1000), zmq.POLLIN):  # type: ignore[call-arg]
                await sock.recv()
                return True
        except zmq.ZMQError:
            pass
        self.close()  # a REQ socket that lost its reply must be remade
        return False

    def close(self) -> None:
        """Close the socket."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close(linger=0)


class RemoteKernelManager(KernelManagerABC):
    """The process-level manager of a kernel on another machine.

    Subclasses implement :meth:`_poll` (has the kernel ended, and how),
    :meth:`_send_signal` and :meth:`_terminate`, and may override
    :meth:`_follow` when the remote side pushes the exit itself. One watcher
    task per kernel, owned here: :meth:`cleanup` cancels and awaits it.
    """

    #: Seconds between polls of the remote side while the kernel runs.
    poll_interval = 5.0
    #: Seconds between heartbeats; a miss triggers a poll at once.
    heartbeat_interval = 1.0
    #: Seconds between polls while someone waits for the end (a shutdown).
    waiting_poll_interval = 0.25
    #: Seconds :meth:`kill` waits for the remote side to confirm the end.
    kill_timeout = 60.0
    #: Seconds without an answered heartbeat after which the kernel's machine
    #: counts as lost (None: never; the remote side's word only).
    node_lost_after: float | None = None

    def __init__(
        self,
        info: ConnectionInfo,
        *,
        kernel_id: str,
        pid: int,
        hostname: str,
        files_to_cleanup: Sequence[str] = (),
    ) -> None:
        self.kernel_id = kernel_id
        self.info = info
        #: The kernel's pid on its node.
        self.pid = pid
        #: The node's host name, as the kernel reported it.
        self.hostname = hostname
        self.files_to_cleanup = list(files_to_cleanup)
        #: Why the kernel ended, in the remote side's words (e.g. "CANCELLED").
        self.end_reason = ""
        self._returncode: int | None = None
        self._exited: asyncio.Future[int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._poke: asyncio.Event | None = None
        self._waiting = 0
        self._last_beat = time.monotonic()
        self._cleaned = False

    def __repr__(self) -> str:
        state = "alive" if self._returncode is None else f"exited({self._returncode})"
        return f"<{type(self).__name__} {self.hostname}:{self.pid} {state}>"

    # -- what subclasses provide ----------------------------------------------

    async def _poll(self) -> tuple[int, str] | None:
        """``(exit code, reason)`` once the kernel has ended, else None."""
        raise NotImplementedError

    async def _send_signal(self, signum: int) -> None:
        raise NotImplementedError

    async def _terminate(self) -> None:
        """Make the remote side end the kernel for good (SIGKILL, scancel)."""
        raise NotImplementedError

    async def _lost(self, silent_for: float) -> tuple[int, str]:
        """The kernel's machine has not answered for ``silent_for`` s: end it, say why."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._terminate(), 30)
        return 255, f"no heartbeat from {self.hostname} for {silent_for:.0f} s: machine lost"

    async def _follow(self) -> tuple[int, str]:
        """Wait for the kernel's end: gentle polls, hurried by missed heartbeats."""
        assert self._poke is not None
        pinger = HeartbeatPinger(self.info.url("hb"), self.info)
        beats = asyncio.get_running_loop().create_task(self._heartbeats(pinger))
        try:
            while True:
                ended = await self._poll()
                if ended is not None:
                    return ended
                silent = time.monotonic() - self._last_beat
                if self.node_lost_after is not None and silent > self.node_lost_after:
                    # The remote side still says "running" but cannot be reached: a
                    # node that vanished is noticed by its schedulers only much later.
                    return await self._lost(silent)
                self._poke.clear()
                interval = self.waiting_poll_interval if self._waiting else self.poll_interval
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), interval)
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
            pinger.close()

    async def _heartbeats(self, pinger: HeartbeatPinger) -> None:
        assert self._poke is not None
        self._last_beat = time.monotonic()
        while True:
            started = time.monotonic()
            if await pinger.beat(self.heartbeat_interval):
                self._last_beat = time.monotonic()
            else:
                self._poke.set()  # not answering: ask the remote side now
            rest = self.heartbeat_interval - (time.monotonic() - started)
            if rest > 0:
                await asyncio.sleep(rest)  # the beat's period, not an ordering wait

    # -- the watcher ----------------------------------------------------------

    def start_watching(self) -> None:
        """Begin following the kernel from the running loop (idempotent)."""
        loop = asyncio.get_running_loop()
        if self._exited is not None and (self._loop is loop or not self._loop_closed()):
            return
        self._loop = loop
        self._exited = loop.create_future()
        self._poke = asyncio.Event()
        if self._returncode is not None:
            self._exited.set_result(self._returncode)
            return
        name = f"kk-remote-{(self.kernel_id or '')[:8]}"
        self._watcher = loop.create_task(self._watch(), name=name)

    def _loop_closed(self) -> bool:
        return self._loop is None or self._loop.is_closed()

    async def _watch(self) -> None:
        try:
            code, reason = await self._follow()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the remote side cannot be asked any more
            log.warning("Lost track of remote kernel %s: %s", self.kernel_id, e)
            code, reason = 255, f"lost: {e}"
        self._finish(code, reason)

    def _finish(self, code: int, reason: str) -> None:
        if self._returncode is None:
            self._returncode = code
            self.end_reason = reason
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(self._returncode)

    # -- KernelManagerABC -----------------------------------------------------

    @property
    def exit_code(self) -> int | None:
        """The kernel's exit status once it has ended (negative: killed by that signal)."""
        return self._returncode

    def stderr_tail(self, lines: int = 20) -> str:
        """The remote side's account of the end (no stderr is copied from nodes)."""
        return self.end_reason

    async def is_alive(self) -> bool:
        """Is the kernel still running, as far as the last poll or exit event knows?"""
        self.start_watching()
        assert self._exited is not None
        return not self._exited.done()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` s) for the kernel to end; True if still alive."""
        self.start_watching()
        assert self._exited is not None and self._poke is not None
        if not self._exited.done():
            # Someone waits for the end (a shutdown): look now and often, not in seconds.
            self._waiting += 1
            self._poke.set()
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exited), timeout)
            finally:
                self._waiting -= 1
        return not self._exited.done()

    async def signal(self, signum: int) -> None:
        """Send ``signum`` to the kernel's process group on its node."""
        if await self.is_alive():
            await self._send_signal(signum)
            assert self._poke is not None
            self._poke.set()

    async def interrupt(self) -> None:
        """Send SIGINT to the kernel (its main thread raises KeyboardInterrupt)."""
        import signal as _signal

        await self.signal(_signal.SIGINT)

    async def kill(self) -> None:
        """End the kernel at once and wait until the remote side says it has ended."""
        if await self.is_alive():
            await self._terminate()
            if await self.wait(timeout=self.kill_timeout):
                # Never hang a shutdown on an unreachable scheduler or host.
                log.warning(
                    "Remote kernel %s: no confirmation of its end after %s s; counting it as ended",
                    self.kernel_id,
                    self.kill_timeout,
                )
                self._finish(255, f"killed; end not confirmed within {self.kill_timeout} s")

    async def cleanup(self) -> None:
        """Kill the kernel if it still runs, stop the watcher, remove local files."""
        if self._cleaned:
            return
        if await self.is_alive():
            await self.kill()
        self._cleaned = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        _conn.remove_files(self.files_to_cleanup)
        await self._release()

    async def _release(self) -> None:
        """Release connections the manager holds (after the kernel has ended)."""


async def await_report(
    report: asyncio.Future[dict[str, Any]],
    ended: asyncio.Future[Any],
    *,
    timeout: float,
    name: str,
    why_late: Any,
    why_ended: Any,
) -> dict[str, Any]:
    """The node's report, or the reason it did not come.

    ``ended`` finishes when the remote side has given up (the job ended, the
    command exited); ``why_ended()`` and ``why_late()`` (coroutines) say why,
    in the scheduler's or the host's words.
    """
    done, _ = await asyncio.wait({report, ended}, timeout=timeout, return_when="FIRST_COMPLETED")
    if report in done:
        return report.result()
    if ended in done:
        raise KernelDiedError(
            f"Kernel {name!r} ended before it registered: {await why_ended()}",
            None,
            "",
        )
    raise KernelTimeoutError(
        f"Kernel {name!r} did not register within {timeout} s: {await why_late()}"
    )

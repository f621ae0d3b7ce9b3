"""Run HTTP kernel gateways and jupyter_server as real processes, and talk to them.

Used by the gateway tests and by ``benchmarks/bench_gateway.py``. Nothing here
depends on pytest; the fixtures live in the test modules.

* ``start_gateway(kind, ...)`` starts the gateway under test: ``"kernelkeeper"``
  (``python -m kernelkeeper.gateway``) or ``"kernel_gateway"`` (Jupyter Kernel
  Gateway in jupyter-websocket mode, which serves the same API).
  ``gateway_kind()`` picks one from ``KK_TEST_GATEWAY`` (default kernelkeeper).
* ``start_jupyter_server(gateway, ...)`` starts jupyter_server (JupyterLab
  included) in gateway mode, pointed at a gateway.
* ``ServerProcess.stop()`` ends a server with SIGTERM, waits for it and every
  process it started, and SIGKILLs what is left (reporting it).
* ``descendants``, ``wait_procs_gone`` and ``reap`` follow processes to their end.
* ``WsKernel`` is a minimal Jupyter WebSocket client (legacy JSON frames) on
  aiohttp.

Readiness is a line on the server's stderr (read by a thread that keeps a
tail for error messages), awaited with a deadline; a server that exits first
fails at once with that tail.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

GATEWAY_KINDS = ("kernelkeeper", "kernel_gateway")
GATEWAY_ENV = "KK_TEST_GATEWAY"

#: The script a fork-server template runs (kernelkeeper.forkserver).
TEMPLATE_SCRIPT = "_forkserver_template.py"
START_TIMEOUT = 90.0  # generous: imports are slow on 2 busy cores
STOP_TIMEOUT = 30.0  # SIGTERM to every process gone (a gateway ends its kernels first)

READY_KERNELKEEPER = re.compile(r"kernelkeeper gateway listening on (http://\S+)")
READY_KERNEL_GATEWAY = re.compile(r"Jupyter Kernel Gateway \S+ is available at (http://\S+)")
READY_JUPYTER_SERVER = re.compile(r"ServerApp\] (http://127\.0\.0\.1:\d+/)\?token=")


def gateway_kind() -> str:
    """The gateway the tests run against: ``$KK_TEST_GATEWAY`` or kernelkeeper's."""
    kind = os.environ.get(GATEWAY_ENV, "kernelkeeper")
    if kind not in GATEWAY_KINDS:
        raise ValueError(f"{GATEWAY_ENV}={kind!r}: expected one of {GATEWAY_KINDS}")
    return kind


def base_env(runtime_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a server process: private Jupyter dirs, this venv first on PATH."""
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["JUPYTER_RUNTIME_DIR"] = str(runtime_dir)
    # Keep the user's own configuration (~/.jupyter) out of the servers under test.
    config = runtime_dir / "config"
    config.mkdir(exist_ok=True)
    env["JUPYTER_CONFIG_DIR"] = str(config)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("JUPYTER_TOKEN", None)
    env.update(extra or {})
    return env


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of ``pid`` (empty if it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_procs_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (zombies count); return those still alive."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def reap(procs: Iterable[psutil.Process]) -> None:
    """Reap those of ``procs`` that ended as zombies re-parented to this process.

    The test process is a subreaper (tests/conftest.py), so a server's orphans
    end up as its children; only processes we waited for are reaped, never a
    child some manager in this process still owns.
    """
    me = os.getpid()
    for p in procs:
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if p.ppid() == me and p.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(p.pid, os.WNOHANG)


def _die_with_parent() -> None:
    # A test run that is killed outright cannot stop() its servers: SIGTERM them
    # then, so that they end their kernels as on a normal stop.
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


class ServerProcess:
    """A server started as a child process, ready once a line of its stderr matches."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        ready: re.Pattern[str],
        cwd: str | None = None,
        timeout: float = START_TIMEOUT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self._ready_re = ready
        self._ready = threading.Event()
        self._tail: collections.deque[str] = collections.deque(maxlen=200)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self.url = ""
        self.stop_report: list[str] = []
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C meant for the test run is not sent to it too
            preexec_fn=_die_with_parent,
        )
        self.pid = self.proc.pid
        self._psproc = psutil.Process(self.pid)
        # The reader is owned by this object and joined in stop(); it ends at EOF,
        # which comes once the server and everything sharing its stderr are gone.
        self._reader = threading.Thread(target=self._read, name=f"{name}-stderr", daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self._tail.append(line)
                listeners = list(self._listeners)
            for listener in listeners:
                listener(line)
            if not self._ready.is_set():
                m = self._ready_re.search(line)
                if m:
                    self.url = m.group(1).rstrip("/")
                    self._ready.set()
        self._ready.set()  # EOF: wake a waiter, which then sees the exit

    def _wait_ready(self, timeout: float) -> None:
        if not self._ready.wait(timeout):
            raise RuntimeError(
                f"{self.name} not ready within {timeout} s; stderr tail:\n{self.tail()}"
            )
        if not self.url:
            self.proc.wait(10)
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode} before it was ready; "
                f"stderr tail:\n{self.tail()}"
            )

    def on_line(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(line)`` (on the reader thread) for every later stderr line."""
        with self._lock:
            self._listeners.append(listener)

    def tail(self, n: int = 60) -> str:
        with self._lock:
            return "\n".join(list(self._tail)[-n:])

    def descendants(self) -> list[psutil.Process]:
        return descendants(self.pid)

    def rss(self) -> int:
        """Resident set size of the server process itself, in bytes."""
        return int(self._psproc.memory_info().rss)

    def listening_port(self, timeout: float = 30.0) -> int:
        """The TCP port the server process itself listens on (for a server told port 0)."""
        deadline = time.monotonic() + timeout
        while True:
            ports = [
                c.laddr.port
                for c in self._psproc.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            ]
            if ports:
                return min(ports)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} listens on no TCP port after {timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> list[str]:
        """SIGTERM the server; wait for it and its descendants; SIGKILL leftovers.

        Returns (and keeps in ``stop_report``) one line per process that had to
        be killed: empty when the server ended everything it started.
        """
        procs = self.descendants()
        report: list[str] = []
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                report.append(
                    f"{self.name} (pid {self.pid}) ignored SIGTERM for {timeout} s; "
                    f"stderr tail:\n{self.tail(30)}"
                )
                self.proc.kill()
                self.proc.wait(10)
        procs += [p for p in self.descendants() if p not in procs]
        for p in wait_procs_gone(procs, timeout):
            with contextlib.suppress(psutil.Error):
                report.append(f"left behind by {self.name}: pid {p.pid} {' '.join(p.cmdline())}")
                p.kill()
        wait_procs_gone(procs, 10)
        reap(procs)
        self._reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.stop_report = report
        return report


@dataclass
class Gateway:
    """A running gateway: its process, base URL, token and runtime dir."""

    kind: str
    server: ServerProcess
    url: str
    token: str
    runtime_dir: Path

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def kernel_files(self) -> list[str]:
        return sorted(p.name for p in self.runtime_dir.rglob("kernel-*"))

    def stop(self) -> list[str]:
        report = self.server.stop()
        report += [f"file left by {self.kind}: {f}" for f in self.kernel_files()]
        return report

    def templates(self) -> list[psutil.Process]:
        """The gateway's fork-server templates (kernelkeeper's, fork server on)."""
        out = []
        for p in self.server.descendants():
            with contextlib.suppress(psutil.Error):
                if any(a.endswith(TEMPLATE_SCRIPT) for a in p.cmdline()):
                    out.append(p)
        return out

    def kernel_processes(self) -> list[psutil.Process]:
        """The gateway's descendants but its fork-server templates: its kernels."""
        templates = {p.pid for p in self.templates()}
        return [p for p in self.server.descendants() if p.pid not in templates]

    def warm_fork_server(self, timeout: float = START_TIMEOUT) -> None:
        """Start and delete one kernel, then wait until the template it brings up
        runs, so that a long-lived gateway's template predates the tests using it
        (and their leak checks). Nothing to do for Kernel Gateway."""
        if self.kind != "kernelkeeper" or self.templates():
            return
        headers = {**self.headers(), "Content-Type": "application/json"}
        post = urllib.request.Request(
            f"{self.url}/api/kernels", data=b"{}", headers=headers, method="POST"
        )
        with urllib.request.urlopen(post, timeout=timeout) as r:
            kernel_id = json.loads(r.read())["id"]
        delete = urllib.request.Request(
            f"{self.url}/api/kernels/{kernel_id}", headers=headers, method="DELETE"
        )
        with urllib.request.urlopen(delete, timeout=timeout):
            pass
        deadline = time.monotonic() + timeout
        while not self.templates():
            if time.monotonic() > deadline:
                return  # started with --no-fork-server, or the template failed: spawns
            time.sleep(0.05)


def start_gateway(
    kind: str,
    runtime_dir: Path,
    token: str | None = None,
    pool: dict[str, int] | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Gateway:
    """Start the gateway ``kind`` on 127.0.0.1 with a free port, and wait until it serves."""
    token = token or uuid.uuid4().hex
    runtime_dir.mkdir(parents=True, exist_ok=True)
    penv = base_env(runtime_dir, env)
    if kind == "kernelkeeper":
        argv = [sys.executable, "-m", "kernelkeeper.gateway"]
        argv += ["--ip", "127.0.0.1", "--port", "0", "--token", token]
        for name, n in (pool or {}).items():
            argv += ["--pool", f"{name}={n}"]
        server = ServerProcess(
            kind, [*argv, *extra_args], penv, READY_KERNELKEEPER, timeout=timeout
        )
        url = server.url
    elif kind == "kernel_gateway":
        if pool:
            raise ValueError("Kernel Gateway has no warm pools")
        argv = [
            sys.executable,
            "-m",
            "kernel_gateway",
            "--KernelGatewayApp.api=kernel_gateway.jupyter_websocket",
            "--KernelGatewayApp.ip=127.0.0.1",
            "--KernelGatewayApp.port=0",
            "--KernelGatewayApp.port_retries=0",
            f"--KernelGatewayApp.auth_token={token}",
            # jupyter_server's gateway client lists kernels; KG refuses that by default.
            "--JupyterWebsocketPersonality.list_kernels=True",
        ]
        server = ServerProcess(
            kind, [*argv, *extra_args], penv, READY_KERNEL_GATEWAY, timeout=timeout
        )
        # Told port 0, KG logs ":0"; the port it got is the one its process listens on.
        url = f"http://127.0.0.1:{server.listening_port()}"
    else:
        raise ValueError(f"unknown gateway kind {kind!r}")
    return Gateway(kind, server, url.rstrip("/"), token, runtime_dir)


@dataclass
class JupyterServer:
    """jupyter_server (with JupyterLab) in gateway mode."""

    server: ServerProcess
    url: str
    token: str
    root_dir: Path

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def stop(self) -> list[str]:
        return self.server.stop()


def start_jupyter_server(
    gateway: Gateway,
    root_dir: Path,
    runtime_dir: Path,
    token: str | None = None,
    lab: bool = True,
    extra_args: Sequence[str] = (),
    timeout: float = START_TIMEOUT,
) -> JupyterServer:
    """Start ``jupyter server`` with ``--GatewayClient.url`` pointing at ``gateway``.

    ``lab=True`` serves JupyterLab (``/lab``) too.
    """
    token = token or uuid.uuid4().hex
    runtime_dir.mkdir(parents=True, exist_ok=True)
    env = base_env(runtime_dir)
    # Server extensions the tests do not use only slow the start down; the user
    # config dir (private, see base_env) takes precedence over the environment's.
    off = ["jupyter_lsp", "jupyter_server_terminals", "notebook_shim", "nbclassic"]
    if not lab:
        off.append("jupyterlab")
    config = {"ServerApp": {"jpserver_extensions": dict.fromkeys(off, False)}}
    Path(env["JUPYTER_CONFIG_DIR"], "jupyter_server_config.json").write_text(json.dumps(config))
    argv = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",  # CI runs as root
        f"--ServerApp.root_dir={root_dir}",
        f"--IdentityProvider.token={token}",
        f"--GatewayClient.url={gateway.url}",
        f"--GatewayClient.auth_token={gateway.token}",
        # Generous: a kernel start on 2 busy cores can take many seconds.
        "--GatewayClient.request_timeout=120",
        "--GatewayClient.connect_timeout=60",
        *extra_args,
    ]
    server = ServerProcess("jupyter_server", argv, env, READY_JUPYTER_SERVER, timeout=timeout)
    return JupyterServer(server, server.url, token, root_dir)


# --- a minimal Jupyter WebSocket client (legacy JSON frames) -------------------------


def new_msg(msg_type: str, content: dict[str, Any], session: str, channel: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": session,
            "username": "test",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
        "buffers": [],
    }


@dataclass
class ExecResult:
    """What one execute_request produced, as seen on one WebSocket."""

    msg_id: str
    reply: dict[str, Any] | None = None
    stdout: str = ""
    idle: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str | None:
        return None if self.reply is None else str(self.reply["content"]["status"])


class WsKernel:
    """One WebSocket to ``{base}/api/kernels/{id}/channels``; messages routed by parent msg_id.

    Owns one reader task, ended by ``close()``.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[Any], session_id: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self.unmatched: list[dict[str, Any]] = []  # shell replies to nothing this socket sent
        self.closed = False
        self._results: dict[str, ExecResult] = {}
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        http: aiohttp.ClientSession,
        base_ws_url: str,
        kernel_id: str,
        headers: dict[str, str],
        session_id: str | None = None,
    ) -> WsKernel:
        session_id = session_id or uuid.uuid4().hex
        url = f"{base_ws_url}/api/kernels/{kernel_id}/channels?session_id={session_id}"
        ws = await http.ws_connect(url, headers=headers, max_msg_size=64 * 2**20)
        return cls(ws, session_id)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                msg = json.loads(frame.data)
                parent = (msg.get("parent_header") or {}).get("msg_id")
                result = self._results.get(parent) if parent else None
                if result is None:
                    if msg.get("channel") == "shell":
                        self.unmatched.append(msg)
                    continue
                result.messages.append(msg)
                mtype = msg["header"]["msg_type"]
                if msg.get("channel") == "shell" and mtype.endswith("_reply"):
                    result.reply = msg
                elif mtype == "stream" and msg["content"].get("name") == "stdout":
                    result.stdout += msg["content"]["text"]
                elif mtype == "status" and msg["content"].get("execution_state") == "idle":
                    result.idle = True
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self.closed = True
            async with self._changed:
                self._changed.notify_all()

    async def send(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        """Send a request; returns its msg_id."""
        msg = new_msg(msg_type, content, self.session_id, channel)
        msg_id: str = msg["header"]["msg_id"]
        self._results[msg_id] = ExecResult(msg_id)
        await self.ws.send_str(json.dumps(msg))
        return msg_id

    async def send_execute(self, code: str) -> str:
        content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
        return await self.send("execute_request", content)

    async def execute(self, code: str, timeout: float = 60.0) -> ExecResult:
        """Run ``code``; return once its reply and the idle status after it arrived."""
        return await self.wait(await self.send_execute(code), timeout)

    async def wait_until(
        self, msg_id: str, pred: Callable[[ExecResult], bool], what: str, timeout: float
    ) -> ExecResult:
        """Wait until ``pred`` holds for what arrived in response to ``msg_id``."""
        result = self._results[msg_id]

        def done() -> bool:
            return pred(result) or self.closed

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(done), timeout)
        except asyncio.TimeoutError:
            got = [m["header"]["msg_type"] for m in result.messages]
            raise TimeoutError(f"no {what} for {msg_id} within {timeout} s; got {got}") from None
        if not pred(result):
            raise ConnectionError(f"WebSocket closed before {what} for {msg_id}")
        return result

    async def wait(self, msg_id: str, timeout: float) -> ExecResult:
        """Wait for the reply to ``msg_id`` and the idle status that follows it."""
        return await self.wait_until(
            msg_id, lambda r: r.reply is not None and r.idle, "reply and idle", timeout
        )

    async def wait_for_type(self, msg_id: str, msg_type: str, timeout: float) -> dict[str, Any]:
        """Wait for the first message of ``msg_type`` in response to ``msg_id``."""

        def has(r: ExecResult) -> bool:
            return any(m["header"]["msg_type"] == msg_type for m in r.messages)

        result = await self.wait_until(msg_id, has, msg_type, timeout)
        return next(m for m in result.messages if m["header"]["msg_type"] == msg_type)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await self._reader

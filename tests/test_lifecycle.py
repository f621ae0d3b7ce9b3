"""The second seed's lifecycle API, blocking and async, over tcp and ipc.

Every lifecycle test runs four times: with :class:`kernelkeeper.KernelManager`
(the blocking manager, driven from a worker thread through :class:`SyncKM`, so
the same test body serves both) and with :class:`kernelkeeper.AsyncKernelManager`,
each over ``tcp`` and ``ipc``. Real kernels throughout; every wait is on an
event (a reply, a process exit, a lifecycle event) with a deadline.

The first seed's process-level manager (:class:`kernelkeeper.subproc.KernelManager`)
is tested at the end around processes the test starts itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import kernelkeeper
from helpers import Recorder, assert_gone, find, until_sleeping, wait_gone
from kernelkeeper import (
    AsyncKernelManager,
    KernelState,
    NotRunningError,
    subproc,
)
from kernelkeeper.connection import CHANNELS, ConnectionInfo, allocate_ports, write_connection_file

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")

READY = 60.0  # generous deadlines: 2 cores, other suites may run at the same time
REPLY = 30.0
HIST_ARG = "--HistoryManager.hist_file=:memory:"
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]

# Methods that are coroutines on the async API (and plain calls on the blocking one).
KM_CORO = frozenset(
    {
        "start_kernel",
        "shutdown_kernel",
        "restart_kernel",
        "interrupt_kernel",
        "signal_kernel",
        "is_alive",
        "request_shutdown",
        "finish_shutdown",
        "cleanup",
        "cleanup_resources",
        "kill_kernel",
        "wait_ready",
    }
)
KC_CORO = frozenset(
    {
        "wait_for_ready",
        "execute",
        "kernel_info",
        "shutdown",
        "interrupt",
        "get_shell_msg",
        "get_iopub_msg",
        "get_control_msg",
        "is_alive",
        "run_cell",
    }
)


class _Awaitable:
    """Shows a blocking object as its async twin: the methods that are coroutines
    in the async API run in a worker thread and are awaited."""

    _coro: frozenset[str] = frozenset()

    def __init__(self, obj: Any) -> None:
        object.__setattr__(self, "_obj", obj)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if name in self._coro:

            async def call(*args: Any, **kwargs: Any) -> Any:
                return await asyncio.to_thread(attr, *args, **kwargs)

            return call
        return attr

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._obj, name, value)


class SyncKC(_Awaitable):
    _coro = KC_CORO

    async def aclose(self) -> None:
        await asyncio.to_thread(self._obj.stop_channels)


class SyncKM(_Awaitable):
    _coro = KM_CORO

    def client(self, **kwargs: Any) -> SyncKC:
        kc = self._obj.client(**kwargs)
        assert isinstance(kc, kernelkeeper.BlockingKernelClient)
        return SyncKC(kc)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["tcp", "ipc"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_km(mode: str, transport: str) -> AsyncIterator[Callable[..., Any]]:
    """``make_km(kernel_name="", **ctor_kwargs)``: a manager of the test's flavour.

    Everything made here is shut down at teardown, so a failing test does not
    also leak its kernels.
    """
    made: list[Any] = []

    def make(kernel_name: str = "", **kwargs: Any) -> Any:
        kwargs.setdefault("transport", transport)
        km: Any
        if mode == "sync":
            km = SyncKM(kernelkeeper.KernelManager(kernel_name, **kwargs))
        else:
            km = AsyncKernelManager(kernel_name, **kwargs)
        made.append(km)
        return km

    yield make
    for km in made:
        await km.shutdown_kernel(now=True)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Any]]:
    """``await connect(km)``: a started, ready client; closed at teardown."""
    clients: list[Any] = []

    async def make(km: Any) -> Any:
        kc = km.client()
        clients.append(kc)
        kc.start_channels()
        await kc.wait_for_ready(timeout=READY)
        return kc

    yield make
    for kc in clients:
        await kc.aclose()


async def wait_output(kc: Any, msg_id: str, text: str, timeout: float = REPLY) -> str:
    """Wait until the execution ``msg_id`` has printed ``text`` on stdout; what it printed."""
    deadline = time.monotonic() + timeout
    seen = ""
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{text!r} not printed within {timeout} s (got {seen!r})")
        msg = await kc.get_iopub_msg(timeout=left)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            seen += msg["content"]["text"]
    return seen


async def shell_reply(kc: Any, msg_id: str, timeout: float = REPLY) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no reply to {msg_id} within {timeout} s")
        msg = await kc.get_shell_msg(timeout=left)
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


async def start_sleep(kc: Any, seconds: float) -> str:
    """Run ``time.sleep(seconds)`` in the kernel; return once it is sleeping."""
    # stop_on_error=False: after an interrupt, the kernel would otherwise abort
    # the requests that arrive right after the error reply.
    msg_id = await kc.execute(
        "import os, time; print('sleeping', os.getpid(), 'zz', flush=True); "
        f"time.sleep({seconds}); print('woke')",
        stop_on_error=False,
    )
    text = await wait_output(kc, msg_id, "zz")
    # Interrupt once the main thread sleeps (see helpers.main_thread_sleeping).
    await until_sleeping(int(text.split("sleeping", 1)[1].split()[0]))
    return msg_id


async def spawn_sleeper(kc: Any) -> psutil.Process:
    """Have the kernel start a child process (in the kernel's process group).

    A thread reaps it when it dies: ipykernel's shutdown waits (~28 s) for its
    group children to disappear, and an unreaped zombie never does.
    """
    res = await kc.run_cell(
        "import subprocess, sys, threading\n"
        "_kk_child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "threading.Thread(target=_kk_child.wait, daemon=True).start()\n"
        "print(_kk_child.pid)",
        timeout=REPLY,
    )
    assert res.status == "ok", res.error
    return psutil.Process(int(res.stdout.strip()))


def exists(path: str | os.PathLike[str]) -> bool:
    return os.path.exists(path)


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a process in its own session, as a kernel launcher would."""
    return subprocess.Popen(
        argv,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kernel_files(km: Any) -> list[Path]:
    info = km.connection_info
    assert info is not None
    return [Path(km.connection_file), *(Path(p) for p in info.ipc_paths())]


def read_children(path: Path, timeout: float = READY) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while not path.exists():  # written before the kernel answers its first request
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return [psutil.Process(pid) for pid in json.loads(path.read_text())]


# -- start, introspection, interrupt, shutdown ------------------------------------------


async def test_start_kernel_options_and_shutdown(
    make_km: Any, connect: Any, tmp_path: Path, transport: str, isolated_runtime: Path
) -> None:
    # Half of shutdown_wait_time goes to the shutdown_request before SIGTERM: be
    # generous, this test checks that the kernel exits on the request by itself.
    km = make_km(shutdown_wait_time=30)
    rec = Recorder()
    km.add_event_listener(rec)

    assert not km.has_kernel
    assert km.state is KernelState.NOT_STARTED
    assert not await km.is_alive()
    # As in jupyter_client: the connection the kernel will use, before the start.
    assert set(km.get_connection_info()) >= {
        "transport",
        "ip",
        "shell_port",
        "iopub_port",
        "stdin_port",
        "control_port",
        "hb_port",
        "key",
        "signature_scheme",
    }
    with pytest.raises(NotRunningError):
        km.client()

    cmd = km.format_kernel_cmd(["--extra"])
    assert km.connection_file in cmd
    assert "{connection_file}" not in " ".join(cmd)
    assert cmd[-1] == "--extra"

    workdir = tmp_path / "work dir"
    workdir.mkdir()
    token = uuid.uuid4().hex
    env = {**os.environ, "KK_LIFECYCLE_TOKEN": token}
    await km.start_kernel(cwd=str(workdir), env=env, extra_arguments=[HIST_ARG])

    assert km.has_kernel
    assert await km.is_alive()
    assert km.state in (KernelState.STARTING, KernelState.IDLE, KernelState.BUSY)
    proc = km.process
    assert isinstance(proc, subproc.KernelManager)
    kernel = psutil.Process(proc.pid)
    assert HIST_ARG in kernel.cmdline()
    assert km.format_kernel_cmd()[-1] == HIST_ARG  # the start's extra_arguments are kept

    cf = Path(km.connection_file)
    assert cf.parent == isolated_runtime
    assert exists(cf)
    on_disk = read_json(cf)
    info = km.get_connection_info()
    assert info["transport"] == transport == on_disk["transport"]
    assert isinstance(info["key"], bytes) and info["key"] == on_disk["key"].encode()
    for ch in CHANNELS:
        assert info[f"{ch}_port"] > 0
        assert info[f"{ch}_port"] == on_disk[f"{ch}_port"]
    if transport == "ipc":
        assert info["ip"].startswith(str(isolated_runtime))
        for p in km.connection_info.ipc_paths():
            assert exists(p), p
    assert find(rec.events, "started", pid=proc.pid) is not None

    kc = await connect(km)
    res = await kc.run_cell(
        "import os, sys\n"
        "print(os.getcwd())\n"
        "print(os.environ.get('KK_LIFECYCLE_TOKEN'))\n"
        "print(os.getpid())\n"
        "print(get_ipython().history_manager.hist_file)",
        timeout=REPLY,
    )
    assert res.status == "ok", res.error
    assert res.stdout.splitlines() == [str(workdir), token, str(proc.pid), ":memory:"]
    # The manager follows busy/idle through its clients.
    await rec.wait(lambda evs: KernelState.BUSY in [e.state for e in evs])
    await rec.wait(lambda evs: evs[-1].state is KernelState.IDLE)
    assert km.state is KernelState.IDLE

    # Signal-mode interrupt stops a running sleep.
    msg_id = await start_sleep(kc, 30)
    t0 = time.monotonic()
    await km.interrupt_kernel()
    reply = await shell_reply(kc, msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - t0 < 20
    assert await km.is_alive()
    res = await kc.run_cell("print('still here')", timeout=REPLY)
    assert res.stdout == "still here\n"

    await kc.aclose()
    files = kernel_files(km)
    await km.shutdown_kernel()
    assert proc.exit_code == 0  # it exited on the shutdown_request, nothing was killed
    assert not kernel.is_running()
    assert not km.has_kernel
    assert not await km.is_alive()
    assert km.state is KernelState.DEAD
    assert [f for f in files if f.exists()] == []
    assert rec.kinds().count("shutdown") == 1
    assert rec.events[-1].kind == "shutdown"
    assert KernelState.SHUTTING_DOWN in rec.states()


async def test_shutdown_now_kills(make_km: Any, connect: Any) -> None:
    km = make_km()
    await km.start_kernel()
    kc = await connect(km)
    child = await spawn_sleeper(kc)
    proc = km.process
    kernel = psutil.Process(proc.pid)
    files = kernel_files(km)
    assert all(f.exists() for f in files)
    t0 = time.monotonic()
    await km.shutdown_kernel(now=True)
    assert time.monotonic() - t0 < 5  # no shutdown_request round, no waiting
    assert proc.exit_code == -signal.SIGKILL
    assert not kernel.is_running()
    await assert_gone([child])
    assert not km.has_kernel
    assert km.state is KernelState.DEAD
    assert [f for f in files if f.exists()] == []
    # Shutting down twice is harmless.
    await km.shutdown_kernel()


async def test_request_and_finish_shutdown_then_cleanup_resources(
    make_km: Any, connect: Any
) -> None:
    km = make_km()
    await km.start_kernel()
    await connect(km)
    proc = km.process
    files = kernel_files(km)
    await km.request_shutdown()
    await km.finish_shutdown(waittime=REPLY, pollinterval=0.1)
    assert proc.exit_code == 0  # exited by itself on the request
    assert not await km.is_alive()
    await km.cleanup_resources()
    assert not km.has_kernel
    assert [f for f in files if f.exists()] == []


async def test_cleanup_keeps_connection_file_on_request(make_km: Any) -> None:
    km = make_km()
    rec = Recorder()
    km.add_event_listener(rec)
    await km.start_kernel()
    await km.wait_ready(READY)
    cf = Path(km.connection_file)
    await km.signal_kernel(signal.SIGKILL)
    await rec.wait(lambda evs: find(evs, "died", exit_code=-signal.SIGKILL))
    assert km.state is KernelState.DEAD
    assert not await km.is_alive()
    assert km.has_kernel  # not cleaned up yet
    await km.cleanup(connection_file=False)
    assert not km.has_kernel
    assert exists(cf)  # kept on request
    await km.cleanup()  # and removed by a plain cleanup
    assert not exists(cf)


# -- interrupts ------------------------------------------------------------------------


async def test_interrupt_message_mode(
    make_km: Any, connect: Any, kernel_dir: Callable[..., str]
) -> None:
    name = kernel_dir(
        "slow_start",
        name="ipykernel-msg",
        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        interrupt_mode="message",
    )
    km = make_km(name)
    assert km.kernel_spec.interrupt_mode == "message"
    assert km.ipykernel
    await km.start_kernel()
    kc = await connect(km)
    msg_id = await start_sleep(kc, 30)
    await km.interrupt_kernel()
    reply = await shell_reply(kc, msg_id)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    # The client's interrupt follows the spec too (interrupt_request, with its reply).
    msg_id = await start_sleep(kc, 30)
    ireply = await kc.interrupt(reply=True, timeout=REPLY)
    assert ireply["msg_type"] == "interrupt_reply"
    assert (await shell_reply(kc, msg_id))["content"]["ename"] == "KeyboardInterrupt"


async def test_interrupt_message_mode_uses_the_message(
    make_km: Any, connect: Any, kernel_dir: Callable[..., str]
) -> None:
    # ignore_sigint drops SIGINT from outside; only an interrupt_request stops it.
    name = kernel_dir("ignore_sigint", interrupt_mode="message")
    km = make_km(name)
    await km.start_kernel()
    kc = await connect(km)
    # A signal (what signal mode would send) does not interrupt this kernel ...
    msg_id = await start_sleep(kc, 1.0)
    await km.signal_kernel(signal.SIGINT)
    reply = await shell_reply(kc, msg_id)
    assert reply["content"]["status"] == "ok"
    # ... but interrupt_kernel does, so it went by message.
    msg_id = await start_sleep(kc, 30)
    t0 = time.monotonic()
    await km.interrupt_kernel()
    reply = await shell_reply(kc, msg_id)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - t0 < 20


async def test_signal_kernel_reaches_children(
    make_km: Any, kernel_dir: Callable[..., str], tmp_path: Path
) -> None:
    pids_file = tmp_path / "children.json"
    name = kernel_dir(
        "spawn_children", env={"KK_TEST_CHILDREN": "3", "KK_TEST_CHILDREN_FILE": str(pids_file)}
    )
    km = make_km(name)
    rec = Recorder()
    km.add_event_listener(rec)
    await km.start_kernel()
    await km.wait_ready(READY)
    children = read_children(pids_file)
    assert len(children) == 3
    kernel = psutil.Process(km.process.pid)
    assert all(c.ppid() == kernel.pid for c in children)

    # SIGINT: the idle kernel ignores it, its plain-Python children die of it.
    await km.signal_kernel(signal.SIGINT)
    await assert_gone(children, timeout=5)
    assert await km.is_alive()
    await km.wait_ready(READY)

    # A fresh kernel, and SIGTERM for everyone.
    await km.restart_kernel(now=True)
    await km.wait_ready(READY)
    children = read_children(pids_file)
    assert all(c.ppid() == km.process.pid for c in children)
    await km.signal_kernel(signal.SIGTERM)
    await assert_gone(children, timeout=5)
    await rec.wait(lambda evs: find(evs, "died"))
    assert not await km.is_alive()


# -- restart ---------------------------------------------------------------------------


async def test_restart_kernel(make_km: Any, connect: Any) -> None:
    km = make_km()
    rec = Recorder()
    km.add_event_listener(rec)
    await km.start_kernel()
    kc = await connect(km)  # made before the restarts, used after them
    cf = km.connection_file
    info = km.get_connection_info()
    content = read_json(cf)

    for now, code in ((False, 0), (True, -signal.SIGKILL)):
        old = km.process
        old_kernel = psutil.Process(old.pid)
        child = await spawn_sleeper(kc)
        assert (await kc.run_cell("kk_marker = 1", timeout=REPLY)).status == "ok"
        # Keyword arguments override the start's (here on the second restart).
        env = {**os.environ, "KK_RESTART_TOKEN": "second"} if now else None
        await km.restart_kernel(now=now, **({"env": env} if env else {}))
        assert old.exit_code == code
        await assert_gone([old_kernel, child])
        assert km.has_kernel
        assert await km.is_alive()
        assert km.process.pid != old.pid
        assert km.connection_file == cf
        assert km.get_connection_info() == info  # same ports, same key
        await kc.wait_for_ready(timeout=READY)
        assert read_json(cf) == content
        res = await kc.run_cell(
            "import os\n"
            "print(os.getpid(), 'kk_marker' in dir(), os.environ.get('KK_RESTART_TOKEN'))",
            timeout=REPLY,
        )
        token = "second" if now else "None"
        assert res.stdout.split() == [str(km.process.pid), "False", token]  # a fresh kernel
        assert find(rec.events, "restarting", now=now) is not None
        assert find(rec.events, "restarted", pid=km.process.pid) is not None

    assert "shutdown" not in rec.kinds()
    assert KernelState.RESTARTING in rec.states()


async def test_restart_needs_a_kernel(make_km: Any) -> None:
    km = make_km()
    with pytest.raises(NotRunningError):
        await km.restart_kernel()
    with pytest.raises(NotRunningError):
        await km.interrupt_kernel()
    with pytest.raises(NotRunningError):
        await km.signal_kernel(signal.SIGTERM)


async def test_adopt_id_renames_the_file_and_never_overwrites(isolated_runtime: Path) -> None:
    km = AsyncKernelManager()
    km.adopt_id("before-start")  # nothing on disk yet: the default path follows the id
    assert km.kernel_id == "before-start"
    assert km.connection_file == str(isolated_runtime / "kernel-before-start.json")
    await km.start_kernel()
    new_cf = str(isolated_runtime / "kernel-mine.json")
    try:
        old_id, old_cf = km.kernel_id, km.connection_file
        content = read_json(old_cf)
        taken = isolated_runtime / "kernel-taken.json"
        taken.write_text("{}")
        with pytest.raises(kernelkeeper.LifecycleError, match="exists"):
            km.adopt_id("taken", str(taken))
        # Nothing changed: neither the manager nor the other file.
        assert (km.kernel_id, km.connection_file) == (old_id, old_cf)
        assert read_json(old_cf) == content and taken.read_text() == "{}"
        taken.unlink()

        km.adopt_id("mine", new_cf)
        assert km.kernel_id == "mine" and km.process.kernel_id == "mine"
        assert km.connection_file == new_cf and not exists(old_cf)
        assert read_json(new_cf) == content
        assert new_cf in km.process.files_to_cleanup
        assert old_cf not in km.process.files_to_cleanup
        km.adopt_id("mine-too")  # without a path only the id changes
        assert km.kernel_id == "mine-too" and km.connection_file == new_cf
        # A restart launches on the adopted file.
        await km.restart_kernel(now=True)
        assert km.connection_file == new_cf and read_json(new_cf) == content
        await km.wait_ready(READY)
    finally:
        await km.shutdown_kernel(now=True)
    assert not exists(new_cf)


async def test_set_launch_args_are_used_by_restarts(tmp_path: Path) -> None:
    km = AsyncKernelManager()
    with pytest.raises(TypeError, match="unexpected arguments"):
        km.set_launch_args(no_such_argument=1)
    await km.start_kernel()
    kc = km.client()
    try:
        kc.start_channels()
        await kc.wait_for_ready(timeout=READY)
        code = (
            f"import os; print(os.path.samefile('.', {str(tmp_path)!r}),"
            " os.environ.get('KK_LAUNCH_TOKEN'))"
        )
        first = await kc.run_cell(code, timeout=REPLY)
        assert first.stdout.split() == ["False", "None"]
        km.set_launch_args(cwd=str(tmp_path), env={**os.environ, "KK_LAUNCH_TOKEN": "set"})
        await km.restart_kernel(now=True)
        await kc.wait_for_ready(timeout=READY)
        res = await kc.run_cell(code, timeout=REPLY)
        assert res.stdout.split() == ["True", "set"]
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=True)


async def test_autorestart_and_restart_callbacks(make_km: Any, connect: Any) -> None:
    km = make_km(autorestart=True)
    assert km.autorestart
    rec = Recorder()
    km.add_event_listener(rec)
    restarted = threading.Event()
    calls: list[str] = []
    km.add_restart_callback(restarted.set)
    km.add_restart_callback(lambda: calls.append("restart"))

    def removed() -> None:
        calls.append("removed")

    km.add_restart_callback(removed)
    km.remove_restart_callback(removed)
    km.add_restart_callback(lambda: calls.append("dead"), event="dead")

    await km.start_kernel()
    kc = await connect(km)
    info = km.get_connection_info()
    old_pid = km.process.pid
    child = await spawn_sleeper(kc)

    os.kill(old_pid, signal.SIGKILL)
    assert await asyncio.to_thread(restarted.wait, READY)
    await rec.wait(lambda evs: find(evs, "restarted"))
    assert find(rec.events, "died", exit_code=-signal.SIGKILL) is not None
    await assert_gone([child])  # the dead kernel's group went with it
    assert km.process.pid != old_pid
    assert await km.is_alive()
    assert km.get_connection_info() == info
    await kc.wait_for_ready(timeout=READY)
    res = await kc.run_cell("print(6 * 7)", timeout=REPLY)
    assert res.stdout == "42\n"
    assert calls == ["restart"]

    # A shutdown we ask for is not a death: no callback, no restart.
    proc = km.process
    await kc.aclose()
    await km.shutdown_kernel()
    assert proc.exit_code == 0
    assert not km.has_kernel
    assert calls == ["restart"]
    assert rec.kinds().count("restarted") == 1


async def test_autorestart_dead_after_restart_limit(make_km: Any) -> None:
    km = make_km(autorestart=True, restart_limit=1)
    rec = Recorder()
    km.add_event_listener(rec)
    restarted, dead = threading.Event(), threading.Event()
    km.add_restart_callback(restarted.set)
    km.add_restart_callback(dead.set, "dead")
    await km.start_kernel()
    await km.wait_ready(READY)

    os.kill(km.process.pid, signal.SIGKILL)
    await rec.wait(lambda evs: find(evs, "restarted"))
    assert restarted.is_set() and not dead.is_set()
    await km.wait_ready(READY)
    restarted.clear()

    files = kernel_files(km)
    os.kill(km.process.pid, signal.SIGKILL)  # the second death in a row: past the limit
    assert await asyncio.to_thread(dead.wait, READY)
    assert not restarted.is_set()
    assert km.state is KernelState.DEAD
    assert not await km.is_alive()
    assert rec.kinds().count("restarted") == 1
    await km.shutdown_kernel()
    assert not km.has_kernel
    assert [f for f in files if f.exists()] == []


# -- one-call helpers ------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_start_new_kernel(transport: str) -> None:
    km, kc = kernelkeeper.start_new_kernel(startup_timeout=READY, transport=transport)
    try:
        assert isinstance(km, kernelkeeper.KernelManager)
        assert isinstance(kc, kernelkeeper.BlockingKernelClient)
        assert km.transport == transport == kc.connection_info.transport
        assert km.is_alive()
        reply = kc.execute("x = 6 * 7", reply=True, timeout=REPLY)
        assert reply["content"]["status"] == "ok"
        assert kc.run_cell("x", timeout=REPLY).result() == {"text/plain": "42"}
        kernel = psutil.Process(km.process.pid)
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    assert not kernel.is_running()  # exited and reaped
    assert not km.has_kernel


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_run_kernel(transport: str) -> None:
    with kernelkeeper.run_kernel(transport=transport, startup_timeout=READY) as kc:
        res = kc.run_cell("import os; print(os.getpid())", timeout=REPLY)
        kernel = psutil.Process(int(res.stdout))
        assert kc.is_alive()
    wait_gone([kernel])
    assert not kc.channels_running


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_async_start_new_kernel(transport: str) -> None:
    km, kc = await kernelkeeper.async_start_new_kernel(startup_timeout=READY, transport=transport)
    try:
        assert isinstance(km, AsyncKernelManager)
        assert isinstance(kc, kernelkeeper.AsyncKernelClient)
        assert km.connection_info.transport == transport
        reply = await kc.execute("1 + 1", reply=True, timeout=REPLY)
        assert reply["content"]["status"] == "ok"
        proc = km.process
    finally:
        await kc.aclose()
        await km.shutdown_kernel()
    assert proc.exit_code == 0
    assert not km.has_kernel


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_async_run_kernel(transport: str) -> None:
    async with kernelkeeper.async_run_kernel(transport=transport, startup_timeout=READY) as kc:
        res = await kc.run_cell("import os; print(os.getpid())", timeout=REPLY)
        kernel = psutil.Process(int(res.stdout))
        assert await kc.is_alive()
    await assert_gone([kernel])
    assert not kc.channels_running


# -- the blocking manager from threads and from inside a running loop -------------------


def test_blocking_manager_from_thread_pool() -> None:
    def work(i: int) -> tuple[int, int]:
        km = kernelkeeper.KernelManager()
        km.start_kernel(startup_timeout=120)
        kc = km.client()
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=120)
            res = kc.run_cell(f"import os; print({i}, os.getpid())", timeout=REPLY)
            n, pid = map(int, res.stdout.split())
            assert pid == km.process.pid
            return n, pid
        finally:
            kc.stop_channels()
            km.shutdown_kernel()
            assert not km.has_kernel

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert [n for n, _ in results] == list(range(8))
    assert len({pid for _, pid in results}) == 8


async def test_blocking_manager_inside_running_loop() -> None:
    # A notebook calling the blocking API: it must not need (or disturb) our loop.
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    km = kernelkeeper.KernelManager()
    try:
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=READY)
            assert kc.run_cell("print('hi')", timeout=REPLY).stdout == "hi\n"
            km.restart_kernel()
            kc.wait_for_ready(timeout=READY)
            assert kc.run_cell("print('again')", timeout=REPLY).stdout == "again\n"
        finally:
            kc.stop_channels()
    finally:
        km.shutdown_kernel()
    assert not km.has_kernel
    # Our loop still runs normally afterwards.
    before = ticks
    await asyncio.sleep(0.05)
    assert ticks > before
    task.cancel()


# -- the first seed: subproc.KernelManager around a process we start -------------------


def _sleeper_with_child(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    pidfile = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time, os\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pidfile)!r} + '.tmp', 'w').write(str(c.pid))\n"
        f"os.replace({str(pidfile)!r} + '.tmp', {str(pidfile)!r})\n"
        "time.sleep(120)\n"
    )
    return spawn([sys.executable, "-c", code]), pidfile


def _read_pid(path: Path, proc: subprocess.Popen[bytes] | None = None) -> psutil.Process:
    deadline = time.monotonic() + READY
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never written"
        assert proc is None or proc.poll() is None, "process died"
        time.sleep(0.02)
    return psutil.Process(int(path.read_text()))


async def test_subproc_manager_popen_signal_wait_cleanup(tmp_path: Path) -> None:
    popen = spawn(SLEEPER)
    junk = tmp_path / "kernel-junk.json"
    junk.write_text("{}")
    pm = subproc.KernelManager(popen, files_to_cleanup=[str(junk)], kernel_id="k1")
    assert isinstance(pm, kernelkeeper.KernelManagerABC)
    assert pm.pid == popen.pid
    assert pm.kernel_id == "k1"
    assert await pm.is_alive()
    assert pm.exit_code is None
    assert await pm.wait(timeout=0.05)  # still alive after the wait
    await pm.signal(signal.SIGTERM)
    assert await pm.wait(timeout=10) is False
    assert not await pm.is_alive()
    assert pm.exit_code == -signal.SIGTERM
    assert popen.returncode == -signal.SIGTERM  # reaped
    assert await pm.wait() is False
    await pm.signal(signal.SIGTERM)  # an exited process is left alone
    assert junk.exists()
    await pm.cleanup()
    assert not junk.exists()
    await pm.cleanup()  # idempotent


async def test_subproc_manager_interrupt_and_kill(tmp_path: Path) -> None:
    popen = spawn(SLEEPER)
    pm = subproc.KernelManager(popen)
    assert await pm.is_alive()
    await pm.interrupt()
    assert await pm.wait(timeout=10) is False
    assert pm.exit_code in (1, -signal.SIGINT)  # KeyboardInterrupt

    popen, pidfile = _sleeper_with_child(tmp_path)
    pm = subproc.KernelManager(popen)
    child = _read_pid(pidfile, popen)
    await pm.kill()  # the whole group, waited for
    assert not await pm.is_alive()
    assert pm.exit_code == -signal.SIGKILL
    await assert_gone([child])
    await pm.cleanup()


async def test_subproc_manager_kills_group_when_leader_exits(tmp_path: Path) -> None:
    popen, pidfile = _sleeper_with_child(tmp_path)
    pm = subproc.KernelManager(popen)
    assert await pm.is_alive()
    child = _read_pid(pidfile, popen)
    os.kill(popen.pid, signal.SIGKILL)  # only the leader
    assert await pm.wait(timeout=10) is False
    await assert_gone([child], timeout=5)
    await pm.cleanup()


async def test_subproc_manager_asyncio_process(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(*SLEEPER, start_new_session=True)
    junk = tmp_path / "kernel-junk.json"
    junk.write_text("{}")
    pm = subproc.KernelManager(proc, files_to_cleanup=[str(junk)])
    assert pm.pid == proc.pid
    assert await pm.is_alive()
    assert await pm.wait(timeout=0.05)
    await pm.signal(signal.SIGTERM)
    assert await pm.wait(timeout=10) is False
    assert pm.exit_code == -signal.SIGTERM
    await pm.cleanup()
    assert not junk.exists()

    proc = await asyncio.create_subprocess_exec(*SLEEPER, start_new_session=True)
    pm = subproc.KernelManager(proc)
    await pm.kill()
    assert not await pm.is_alive()
    assert pm.exit_code == -signal.SIGKILL
    await pm.cleanup()


async def test_subproc_manager_with_a_plain_ipykernel(isolated_runtime: Path) -> None:
    """The seed's use: a kernel started by hand, managed and talked to."""
    ports = allocate_ports()
    info = ConnectionInfo(
        key=uuid.uuid4().hex.encode(),
        **{f"{ch}_port": p for ch, p in zip(CHANNELS, ports, strict=True)},
    )
    cf = str(isolated_runtime / f"kernel-{uuid.uuid4()}.json")
    write_connection_file(info, cf)
    popen = spawn([sys.executable, "-m", "ipykernel_launcher", "-f", cf])
    pm = subproc.KernelManager(popen, files_to_cleanup=[cf])
    kc = kernelkeeper.AsyncKernelClient(cf, manager=pm)
    try:
        kc.start_channels()
        await kc.wait_for_ready(timeout=READY)
        msg_id = await start_sleep(kc, 30)
        await pm.interrupt()
        reply = await shell_reply(kc, msg_id)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert await kc.is_alive()
    finally:
        await kc.aclose()
        await pm.kill()
    assert not await kc.is_alive()
    assert pm.exit_code == -signal.SIGKILL
    await pm.cleanup()
    assert not exists(cf)

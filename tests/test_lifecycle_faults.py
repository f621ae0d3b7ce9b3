"""Lifecycle under pressure: a shutdown during a slow start, misuse, a second event loop,
a stalled stderr reader, slow listeners.

Real kernels throughout. The slow kernels are unmodified ipykernels made to
start late by tests/kernels/slow_import (a sitecustomize on PYTHONPATH), so
they go through the handshake launcher like any ipykernel.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import kernelkeeper
from helpers import KERNELS_DIR, Recorder, assert_gone, find, wait_for
from kernelkeeper import (
    AsyncKernelManager,
    ConfigurationError,
    KernelError,
    KernelState,
    LifecycleError,
    NotRunningError,
    subproc,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")

READY = 60.0
REPLY = 30.0
IPYKERNEL = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


@pytest.fixture
def slow_kernel(kernel_dir: Callable[..., str], tmp_path: Path) -> Callable[..., str]:
    """``slow_kernel(delay=None)``: an ipykernel spec that starts late.

    With ``delay=None`` the delay is read from a file at each start (see
    ``delay_file``), so a test can make only a later start slow.
    """

    def make(delay: float | None = None, name: str = "slow-ipykernel") -> str:
        env = {"PYTHONPATH": str(KERNELS_DIR / "slow_import")}
        if delay is None:
            env["KK_TEST_START_DELAY_FILE"] = str(tmp_path / "delay")
        else:
            env["KK_TEST_START_DELAY"] = str(delay)
        return kernel_dir("slow_start", name=name, argv=IPYKERNEL, env=env)

    return make


def launched_kernel(connection_file: str) -> psutil.Process | None:
    """The kernel process started for ``connection_file``, once it exists."""
    for p in psutil.Process().children(recursive=True):
        try:
            if connection_file in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            continue
    return None


# -- shutdown wins over a slow start ----------------------------------------------------


async def test_shutdown_abandons_a_slow_start(
    managers: Any, slow_kernel: Callable[..., str], isolated_runtime: Path
) -> None:
    km = managers(slow_kernel(30))
    assert km.ipykernel  # the handshake path: start_kernel waits for the registration
    rec = Recorder()
    km.add_event_listener(rec)
    start = asyncio.create_task(km.start_kernel(startup_timeout=120))
    kernel = await asyncio.to_thread(wait_for, lambda: launched_kernel(km.connection_file), READY)
    assert not start.done()
    t0 = time.monotonic()
    await km.shutdown_kernel()
    elapsed = time.monotonic() - t0
    with pytest.raises(LifecycleError, match="shutdown_kernel"):
        await start
    assert time.monotonic() - t0 < 5  # not the 30 s the kernel sleeps
    assert elapsed < 5
    await assert_gone([kernel], timeout=5)
    assert not km.has_kernel
    assert km.state is KernelState.DEAD
    assert rec.kinds()[-1] == "shutdown"
    assert [e.state for e in rec.events if e.kind == "state"] == [
        KernelState.STARTING,
        KernelState.SHUTTING_DOWN,
        KernelState.DEAD,
    ]
    # (the fixture checks that no kernel file is left behind)
    # The manager is usable afterwards.
    await km.shutdown_kernel()
    assert km.state is KernelState.DEAD


async def test_blocking_shutdown_abandons_a_slow_start(slow_kernel: Callable[..., str]) -> None:
    km = kernelkeeper.KernelManager(slow_kernel(30))
    errors: list[BaseException] = []

    def start() -> None:
        try:
            km.start_kernel(startup_timeout=120)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=start)
    t.start()
    try:
        kernel = await asyncio.to_thread(
            wait_for, lambda: launched_kernel(km.connection_file), READY
        )
        t0 = time.monotonic()
        await asyncio.to_thread(km.shutdown_kernel)
        await asyncio.to_thread(t.join, READY)
        assert time.monotonic() - t0 < 5
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], LifecycleError), errors
        assert isinstance(errors[0], RuntimeError)
        await assert_gone([kernel], timeout=5)
        assert km.state is KernelState.DEAD
    finally:
        await asyncio.to_thread(t.join, READY)
        await asyncio.to_thread(km.shutdown_kernel, now=True)


async def test_shutdown_abandons_a_slow_restart(
    managers: Any, slow_kernel: Callable[..., str], tmp_path: Path
) -> None:
    km = managers(slow_kernel(None))
    await km.start_kernel()
    await km.wait_ready(READY)
    (tmp_path / "delay").write_text("30")  # the next start of this kernel is slow
    restart = asyncio.create_task(km.restart_kernel(now=True))
    old_pid = km.process.pid if km.process else None

    def new_kernel() -> psutil.Process | None:
        p = launched_kernel(km.connection_file)
        return p if p is not None and p.pid != old_pid else None

    kernel = await asyncio.to_thread(wait_for, new_kernel, READY)
    t0 = time.monotonic()
    await km.shutdown_kernel()
    with pytest.raises(LifecycleError):
        await restart
    assert time.monotonic() - t0 < 5
    await assert_gone([kernel], timeout=5)
    assert km.state is KernelState.DEAD


async def test_a_cancelled_start_raises_cancelled(
    managers: Any, slow_kernel: Callable[..., str]
) -> None:
    """Cancelling the caller's own task is a cancellation, not a LifecycleError."""
    km = managers(slow_kernel(30))
    start = asyncio.create_task(km.start_kernel(startup_timeout=120))
    kernel = await asyncio.to_thread(wait_for, lambda: launched_kernel(km.connection_file), READY)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    await assert_gone([kernel], timeout=5)
    assert km.state is KernelState.DEAD
    assert not km.has_kernel


# -- misuse ------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["async", "sync"])
async def test_start_on_a_running_kernel_is_a_lifecycle_error(api: str) -> None:
    km: Any = AsyncKernelManager() if api == "async" else kernelkeeper.KernelManager()

    async def call(name: str, *args: Any, **kw: Any) -> Any:
        fn = getattr(km, name)
        if api == "async":
            return await fn(*args, **kw)
        return await asyncio.to_thread(fn, *args, **kw)

    try:
        await call("start_kernel")
        pid = km.process.pid
        with pytest.raises(LifecycleError, match="already running") as info:
            await call("start_kernel")
        assert isinstance(info.value, RuntimeError)
        assert km.process.pid == pid  # the running kernel is untouched
        assert await call("is_alive")
    finally:
        await call("shutdown_kernel", now=True)


async def test_concurrent_starts_one_wins(managers: Any) -> None:
    km = managers()
    results = await asyncio.gather(km.start_kernel(), km.start_kernel(), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["LifecycleError", "NoneType"]
    assert await km.is_alive()


async def test_foreign_loop_is_a_lifecycle_error(managers: Any) -> None:
    km = managers()
    await km.start_kernel()

    def other_loop() -> BaseException | None:
        try:
            asyncio.run(km.is_alive())
        except BaseException as e:
            return e
        return None

    err = await asyncio.to_thread(other_loop)
    assert isinstance(err, LifecycleError), err
    assert "event loop" in str(err)
    assert await km.is_alive()  # the owning loop still drives it


async def test_other_misuse() -> None:
    km = AsyncKernelManager()
    with pytest.raises(NotRunningError):
        await km.restart_kernel()
    with pytest.raises(NotRunningError):
        await km.interrupt_kernel()
    with pytest.raises(NotRunningError):
        await km.signal_kernel(signal.SIGTERM)
    with pytest.raises(NotRunningError):
        km.client()
    with pytest.raises(NotRunningError):
        await km.wait_ready(1)
    with pytest.raises(ConfigurationError):
        km.add_restart_callback(lambda: None, event="no-such-event")
    with pytest.raises(ConfigurationError, match="transport_encryption"):
        AsyncKernelManager(transport_encryption="maybe")
    with pytest.raises(ConfigurationError):
        kernelkeeper.KernelManager(transport_encryption="maybe")
    with pytest.raises(TypeError):
        await km.start_kernel(no_such_option=1)
    # Harmless no-ops without a kernel.
    await km.request_shutdown()
    await km.finish_shutdown()
    await km.cleanup_resources()
    await km.shutdown_kernel()
    assert km.state is KernelState.NOT_STARTED
    for err in (LifecycleError, NotRunningError, ConfigurationError):
        assert issubclass(err, KernelError)


def test_transport_encryption_option() -> None:
    assert AsyncKernelManager().transport_encryption == "disabled"
    for policy in kernelkeeper.curve.POLICIES:
        assert AsyncKernelManager(transport_encryption=policy).transport_encryption == policy


# -- a second asyncio.run() ----------------------------------------------------------------


def test_manager_survives_its_event_loop() -> None:
    km = AsyncKernelManager()
    rec = Recorder()
    km.add_event_listener(rec)
    try:
        asyncio.run(km.start_kernel())
        asyncio.run(km.wait_ready(READY))
        kernel = psutil.Process(km.process.pid)
        assert asyncio.run(km.is_alive())
        asyncio.run(km.restart_kernel())  # the shutdown_request goes out from the new loop
        assert km.process.pid != kernel.pid
        assert not kernel.is_running()
        asyncio.run(km.wait_ready(READY))

        async def run_cell() -> str:
            kc = km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(READY)
                res = await kc.run_cell("print(6 * 7)", timeout=REPLY)
                return res.stdout
            finally:
                await kc.aclose()

        assert asyncio.run(run_cell()) == "42\n"
        proc = km.process
        asyncio.run(km.shutdown_kernel())
        assert proc.exit_code == 0  # it left on the shutdown_request: no kill needed
        assert km.state is KernelState.DEAD
        assert not km.has_kernel
        assert rec.kinds()[-1] == "shutdown"
    finally:
        asyncio.run(km.shutdown_kernel(now=True))


def _gone_or_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_death_between_loops_is_seen_by_the_next_loop() -> None:
    km = AsyncKernelManager()
    try:
        asyncio.run(km.start_kernel())
        pid = km.process.pid
        os.kill(pid, signal.SIGKILL)  # while no loop watches it
        # A zombie (ours to reap), or already reaped by a fork-server template.
        wait_for(lambda: _gone_or_zombie(pid), READY)

        async def check() -> tuple[bool, int | None]:
            # The new loop sees an exit that happened while no loop was running.
            still_alive = await km.process.wait(timeout=READY)
            return still_alive or await km.is_alive(), km.process.exit_code

        alive, code = asyncio.run(check())
        assert not alive
        assert code == -signal.SIGKILL
        asyncio.run(km.shutdown_kernel())
        assert km.state is KernelState.DEAD
    finally:
        asyncio.run(km.shutdown_kernel(now=True))


def test_subproc_manager_survives_its_event_loop() -> None:
    popen = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    pm = subproc.KernelManager(popen)
    assert asyncio.run(pm.is_alive())
    asyncio.run(pm.signal(signal.SIGTERM))
    assert asyncio.run(pm.wait(timeout=READY)) is False
    assert pm.exit_code == -signal.SIGTERM
    asyncio.run(pm.cleanup())


# -- subproc.KernelManager's kernel_id ------------------------------------------------------


def test_subproc_manager_always_has_a_kernel_id() -> None:
    popen = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        a = subproc.KernelManager(popen)
        b = subproc.KernelManager(popen)
        assert isinstance(a.kernel_id, str) and a.kernel_id
        assert a.kernel_id != b.kernel_id
        import uuid

        assert str(uuid.UUID(a.kernel_id)) == a.kernel_id
        assert subproc.KernelManager(popen, kernel_id="given").kernel_id == "given"
    finally:
        popen.wait()


# -- our stderr stalled --------------------------------------------------------------------

# Runs in a child whose stderr is a pipe the test does not read until the end.
# Kernel "flood" writes to its stderr without pause; "quiet" is timed.
STALLED_STDERR = r"""
import asyncio, json, sys, time
import kernelkeeper as kk

# fd 2 of the kernel is the pipe to its manager (ipykernel does not capture it here).
FLOOD = (
    "import os, threading, time\n"
    "def _flood():\n"
    "    chunk = b'x' * 16383 + b'\\n'\n"
    "    while True:\n"
    "        os.write(2, chunk)\n"
    "        time.sleep(0.001)\n"
    "threading.Thread(target=_flood, daemon=True).start()\n"
)

async def main():
    flood, quiet = kk.AsyncKernelManager(), kk.AsyncKernelManager()
    await flood.start_kernel(extra_arguments=["--IPKernelApp.capture_fd_output=False"])
    await quiet.start_kernel()
    fc, kc = flood.client(), quiet.client()
    fc.start_channels()
    kc.start_channels()
    await fc.wait_for_ready(60)
    await kc.wait_for_ready(60)
    await fc.execute(FLOOD, reply=True, timeout=30)
    # Our stderr pipe is full (64 KiB) and the copy buffer (1 MiB) overflows.
    deadline = time.monotonic() + 60
    while getattr(flood.process, "stderr_dropped", 0) == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    times = []
    for _ in range(10):
        t0 = time.monotonic()
        await kc.kernel_info(reply=True, timeout=30)
        times.append(time.monotonic() - t0)
    tail = flood.process.stderr_tail(3)
    out = {"times": times, "dropped": flood.process.stderr_dropped, "tail": tail}
    print(json.dumps(out), flush=True)
    await fc.aclose()
    await kc.aclose()
    await quiet.shutdown_kernel(now=True)
    await flood.shutdown_kernel(now=True)
    print("DONE", flush=True)

asyncio.run(main())
"""


def test_stalled_stderr_reader_blocks_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    child = subprocess.Popen(
        [sys.executable, "-c", STALLED_STDERR],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None and child.stderr is not None
    lines: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in child.stdout or ()])
    reader.start()
    try:
        line = lines.get(timeout=90)  # a loop blocked on our stderr never gets here
        result = json.loads(line)
        assert lines.get(timeout=60).strip() == b"DONE"
    finally:
        # Now read our end, so the child can write what it holds and exit.
        drain = threading.Thread(target=child.stderr.read)
        drain.start()
        try:
            child.wait(60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            drain.join(60)
            reader.join(60)
    assert child.returncode == 0
    assert max(result["times"]) < 2.0, result["times"]
    assert result["dropped"] > 0
    # The tail for error reports is kept whatever was dropped.
    assert "x" * 16383 in result["tail"]
    assert set(result["tail"]) <= {"x", "\n"}


# -- slow listeners and callbacks stall nothing else -----------------------------------------


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()  # never leave a listener blocked


async def test_slow_listener_stalls_no_other_kernel(managers: Any, gate: threading.Event) -> None:
    slow_km, other_km = managers(), managers()
    await asyncio.gather(slow_km.start_kernel(), other_km.start_kernel())
    await asyncio.gather(slow_km.wait_ready(READY), other_km.wait_ready(READY))
    on_thread: list[str] = []

    def blocking_listener(event: kernelkeeper.KernelEvent) -> None:
        on_thread.append(threading.current_thread().name)
        gate.wait(READY)  # a listener that takes its time

    rec = Recorder()
    slow_km.add_event_listener(blocking_listener)
    slow_km.add_event_listener(rec)
    other_rec = Recorder()
    other_km.add_event_listener(other_rec)

    slow_kc, other_kc = slow_km.client(), other_km.client()
    slow_kc.start_channels()
    other_kc.start_channels()
    try:
        await slow_kc.wait_for_ready(READY)  # its busy/idle events reach the slow listener
        res = await slow_kc.run_cell("print('slow kernel runs')", timeout=REPLY)
        assert res.stdout == "slow kernel runs\n"  # its own loop work goes on too
        assert on_thread and on_thread[0] != threading.current_thread().name
        await other_kc.wait_for_ready(READY)
        for _ in range(5):
            t0 = time.monotonic()
            await other_kc.kernel_info(reply=True, timeout=REPLY)
            assert time.monotonic() - t0 < 2.0
        # kernel_info's busy/idle is a probe's and moves no state; a cell's does.
        assert (await other_kc.run_cell("1", timeout=REPLY)).status == "ok"
        await other_rec.wait(lambda evs: evs and evs[-1].state is KernelState.IDLE)
        assert rec.events == []  # held behind the slow listener, in order
        gate.set()
        await rec.wait(lambda evs: len(evs) >= 2 and evs[-1].state is KernelState.IDLE)
        seen = [e.state for e in rec.events]
        assert seen == [KernelState.BUSY, KernelState.IDLE] * (len(seen) // 2)
    finally:
        await slow_kc.aclose()
        await other_kc.aclose()


async def test_slow_restart_callback_stalls_nothing(managers: Any, gate: threading.Event) -> None:
    km = managers(autorestart=True)
    other = managers()
    rec = Recorder()
    km.add_event_listener(rec)
    called = threading.Event()

    def slow_callback() -> None:
        called.set()
        gate.wait(READY)

    km.add_restart_callback(slow_callback)
    await asyncio.gather(km.start_kernel(), other.start_kernel())
    await km.wait_ready(READY)
    await other.wait_ready(READY)
    old = km.process.pid
    os.kill(old, signal.SIGKILL)
    assert await asyncio.to_thread(called.wait, READY)
    # The restart itself goes on while the callback is stuck ...
    await asyncio.to_thread(wait_for, lambda: km.process and km.process.pid != old, READY)
    # ... and so does every other kernel.
    kc = other.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(READY)
        t0 = time.monotonic()
        await kc.kernel_info(reply=True, timeout=REPLY)
        assert time.monotonic() - t0 < 2.0
    finally:
        await kc.aclose()
    assert find(rec.events, "restarted") is None  # delivered after the callback, in order
    gate.set()
    await rec.wait(lambda evs: find(evs, "restarted"))
    kinds = rec.kinds()
    assert kinds.index("died") < kinds.index("restarted")


async def test_coroutine_listener_runs_on_the_loop(managers: Any) -> None:
    km = managers()
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, bool]] = []
    done = asyncio.Event()

    async def listener(event: kernelkeeper.KernelEvent) -> None:
        await asyncio.sleep(0)
        seen.append((event.kind, asyncio.get_running_loop() is loop))
        if event.kind == "shutdown":
            done.set()

    km.add_event_listener(listener)
    await km.start_kernel()
    await km.shutdown_kernel(now=True)
    await asyncio.wait_for(done.wait(), REPLY)
    kinds = [k for k, _ in seen]
    assert kinds.index("started") < kinds.index("shutdown")
    assert all(on_loop for _, on_loop in seen)


async def test_listener_may_call_back_into_its_manager(managers: Any) -> None:
    """A blocking listener that restarts its own kernel must not wait for itself."""
    km = kernelkeeper.KernelManager()
    restarted = threading.Event()
    errors: list[BaseException] = []

    def listener(event: kernelkeeper.KernelEvent) -> None:
        if event.kind == "started":
            try:
                t0 = time.monotonic()
                km.restart_kernel(now=True)
                if time.monotonic() - t0 < 8:  # not the 10 s listener wait
                    restarted.set()
            except BaseException as e:
                errors.append(e)
                restarted.set()

    km.add_event_listener(listener)
    try:
        await asyncio.to_thread(km.start_kernel)
        assert await asyncio.to_thread(restarted.wait, READY)
        assert errors == []
        await asyncio.to_thread(km.wait_ready, READY)
    finally:
        await asyncio.to_thread(km.shutdown_kernel, now=True)


def test_a_failed_restart_leaves_no_connection_file(
    kernel_dir: Callable[..., str], isolated_runtime: Path, tmp_path: Path
) -> None:
    flag = tmp_path / "die"
    name = kernel_dir("exit_on_flag", env={"KK_TEST_EXIT_FLAG": str(flag)})
    km = kernelkeeper.KernelManager(name)
    km.start_kernel(startup_timeout=READY)
    km.wait_ready(READY)
    flag.write_text("")  # from now on the kernel dies while starting
    with pytest.raises(KernelError):
        km.restart_kernel(now=True)
    assert km.state is KernelState.DEAD
    km.shutdown_kernel(now=True)
    assert not [p.name for p in isolated_runtime.iterdir() if p.name.startswith("kernel-")]

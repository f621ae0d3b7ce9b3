"""One supervisor per kernel: deaths and hangs noticed, restarts as the policy says.

Real kernels throughout: ipykernel, and the fault kernels of tests/kernels
(``no_heartbeat``: the heartbeat never answers; ``exit_on_flag``: once a flag
file exists every start dies like ``exit_on_start``; ``slow_import``: a start
that takes as long as a file says). Waits are on lifecycle events and process
exits, with generous deadlines (2 cores, other suites running).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import kernelkeeper
from helpers import KERNELS_DIR, Recorder, assert_gone, find, wait_for
from kernelkeeper import AsyncKernelManager, ConfigurationError, KernelState
from kernelkeeper.supervisor import HeartbeatMonitor

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")

READY = 60.0
REPLY = 30.0
IPYKERNEL = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
# Tight enough that a 10 s computation would be flagged by a monitor that asks
# the kernel's main thread; a hang shows within about 1.5 s.
FAST_HB = {"heartbeat_interval": 0.5, "heartbeat_misses": 3}


class Calls:
    """Restart callbacks (called on a library thread) counted and awaited."""

    def __init__(self, km: AsyncKernelManager) -> None:
        self.restart = 0
        self.dead = threading.Event()
        self._lock = threading.Lock()
        km.add_restart_callback(self._on_restart)
        km.add_restart_callback(self.dead.set, "dead")

    def _on_restart(self) -> None:
        with self._lock:
            self.restart += 1


async def started(km: AsyncKernelManager) -> int:
    await km.start_kernel(startup_timeout=READY)
    await km.wait_ready(READY)
    assert km.process is not None
    pid: int = km.process.pid
    return pid


def count(rec: Recorder, kind: str, **detail: Any) -> int:
    return sum(
        1
        for e in list(rec.events)
        if e.kind == kind and all(e.detail.get(k) == v for k, v in detail.items())
    )


def launched_kernel(connection_file: str, not_pid: int) -> psutil.Process | None:
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid != not_pid and connection_file in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            continue
    return None


# -- deaths ----------------------------------------------------------------------------


async def test_killed_kernel_is_restarted_once_and_usable(managers: Any) -> None:
    km = managers(autorestart=True)
    rec = Recorder()
    km.add_event_listener(rec)
    calls = Calls(km)
    old_pid = await started(km)
    old = psutil.Process(old_pid)
    kc = km.client()  # made before the death: clients follow restarts
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=READY)
        os.killpg(old_pid, signal.SIGKILL)  # from outside, the whole group
        restarted = await rec.wait_kind("restarted", timeout=READY)
        d = restarted.detail
        assert d["reason"] == "died" and d["auto"] is True
        assert d["exit_code"] == -signal.SIGKILL and d["signal"] == signal.SIGKILL
        assert d["attempt"] == 1 and d["restart_limit"] == 5
        assert d["pid"] == km.process.pid != old_pid
        assert isinstance(d["uptime"], float) and d["uptime"] >= 0
        died = find(rec.events, "died")
        assert died is not None and died.detail["signal"] == signal.SIGKILL
        assert died.detail["pid"] == old_pid and "stderr_tail" in died.detail
        restarting = find(rec.events, "restarting", reason="died", auto=True)
        assert restarting is not None
        kinds = rec.kinds()
        assert kinds.index("died") < kinds.index("restarting") < kinds.index("restarted")
        await assert_gone([old])
        await kc.wait_for_ready(timeout=READY)
        res = await kc.run_cell("print(6 * 7)", timeout=REPLY)
        assert res.stdout == "42\n"
        assert calls.restart == 1 and not calls.dead.is_set()
        assert count(rec, "restarted") == 1 and count(rec, "hung") == 0
    finally:
        await kc.aclose()


async def test_kernel_dying_on_start_restarts_up_to_the_limit_then_dead(
    managers: Any, kernel_dir: Callable[..., str], tmp_path: Path
) -> None:
    flag = tmp_path / "fail-from-now-on"
    name = kernel_dir("exit_on_flag", env={"KK_TEST_EXIT_FLAG": str(flag)})
    km = managers(name, autorestart=True, restart_limit=3)
    rec = Recorder()
    km.add_event_listener(rec)
    calls = Calls(km)
    pid = await started(km)
    flag.write_text("")  # every restart from now on dies like exit_on_start.py
    os.kill(pid, signal.SIGKILL)
    assert await asyncio.to_thread(calls.dead.wait, READY)
    dead = await rec.wait_kind("dead", timeout=READY)
    # Callbacks are delivered in order: every restart callback came before "dead".
    assert calls.restart == 3
    assert count(rec, "restarting", auto=True) == 3
    assert count(rec, "restarted") == 0
    assert count(rec, "died", during_restart=True) == 3
    assert count(rec, "died", during_restart=False) == 1
    d = dead.detail
    assert d["reason"] == "died" and d["exit_code"] == 3 and d["signal"] is None
    assert "simulated failure (code 3)" in d["stderr_tail"]
    assert "limit" in d["why"] and d["attempt"] == 3 and d["restart_limit"] == 3
    assert km.state is KernelState.DEAD
    assert not await km.is_alive()
    await km.shutdown_kernel()
    assert not km.has_kernel and km.state is KernelState.DEAD


async def test_autorestart_off_reports_the_death_only(managers: Any) -> None:
    km = managers()
    assert not km.autorestart and not km.supervisor.heartbeat_monitored
    rec = Recorder()
    km.add_event_listener(rec)
    pid = await started(km)
    os.kill(pid, signal.SIGKILL)
    died = await rec.wait_kind("died", timeout=READY)
    assert died.detail["signal"] == signal.SIGKILL and died.detail["reason"] == "died"
    assert km.state is KernelState.DEAD
    await km.shutdown_kernel()
    assert count(rec, "restarting") == 0 and count(rec, "dead") == 0


# -- hangs -----------------------------------------------------------------------------


async def test_silent_heartbeat_is_hung_but_left_alone_without_restart_on_hang(
    managers: Any, kernel_dir: Callable[..., str]
) -> None:
    km = managers(kernel_dir("no_heartbeat"), monitor_heartbeat=True, **FAST_HB)
    rec = Recorder()
    km.add_event_listener(rec)
    pid = await started(km)
    hung = await rec.wait_kind("hung", timeout=READY)
    d = hung.detail
    assert d["reason"] == "hung" and d["pid"] == pid
    assert d["missed_heartbeats"] >= 3
    assert d["detected_after"] >= 1.0  # three pings of 0.5 s went unanswered
    assert d["heartbeat_interval"] == 0.5
    # Reported, not acted on: the same process runs on and still answers.
    assert km.process is not None and km.process.pid == pid
    assert await km.is_alive()
    await km.wait_ready(READY)
    assert count(rec, "restarting") == 0 and count(rec, "hung") == 1


async def test_silent_heartbeat_is_restarted_with_restart_on_hang(
    managers: Any, kernel_dir: Callable[..., str]
) -> None:
    km = managers(kernel_dir("no_heartbeat"), restart_on_hang=True, restart_limit=1, **FAST_HB)
    assert km.restart_on_hang and not km.autorestart
    rec = Recorder()
    km.add_event_listener(rec)
    calls = Calls(km)
    first = psutil.Process(await started(km))
    restarted = await rec.wait_kind("restarted", timeout=READY)
    assert restarted.detail["reason"] == "hung"
    assert restarted.detail["missed_heartbeats"] >= 3
    assert restarted.detail["pid"] != first.pid
    await assert_gone([first])  # killed before the restart
    # The new kernel is silent too: past the limit it is killed and declared dead.
    assert await asyncio.to_thread(calls.dead.wait, READY)
    dead = await rec.wait_kind("dead", timeout=READY)
    assert dead.detail["reason"] == "hung" and "limit" in dead.detail["why"]
    assert count(rec, "hung") == 2 and calls.restart == 1
    assert km.state is KernelState.DEAD
    assert not await km.is_alive()


async def test_stopped_kernel_is_hung_and_restarted(managers: Any) -> None:
    km = managers(autorestart=True, restart_on_hang=True, **FAST_HB)
    rec = Recorder()
    km.add_event_listener(rec)
    pid = await started(km)
    old = psutil.Process(pid)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=READY)
        os.killpg(pid, signal.SIGSTOP)
        hung = await rec.wait_kind("hung", timeout=READY)
        assert hung.detail["pid"] == pid and hung.detail["missed_heartbeats"] >= 3
        restarted = await rec.wait_kind("restarted", timeout=READY)
        assert restarted.detail["reason"] == "hung"
        assert restarted.detail["detected_after"] >= 1.0
        await assert_gone([old])  # SIGKILL ends a stopped process
        assert count(rec, "died") == 0  # killed by us, not a death
        await kc.wait_for_ready(timeout=READY)
        res = await kc.run_cell("print('back')", timeout=REPLY)
        assert res.stdout == "back\n"
    finally:
        await kc.aclose()


async def test_stopped_kernel_that_resumes_is_left_alone_when_only_monitored(
    managers: Any,
) -> None:
    km = managers(monitor_heartbeat=True, **FAST_HB)
    rec = Recorder()
    km.add_event_listener(rec)
    pid = await started(km)
    os.killpg(pid, signal.SIGSTOP)
    try:
        await rec.wait_kind("hung", timeout=READY)
    finally:
        os.killpg(pid, signal.SIGCONT)
    await km.wait_ready(READY)
    assert km.process is not None and km.process.pid == pid
    assert count(rec, "restarting") == 0 and count(rec, "dead") == 0


async def test_busy_kernel_is_not_hung(managers: Any) -> None:
    km = managers(autorestart=True, restart_on_hang=True, **FAST_HB)
    rec = Recorder()
    km.add_event_listener(rec)
    pid = await started(km)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=READY)
        t0 = time.monotonic()
        res = await kc.run_cell("import time; time.sleep(10)", timeout=REPLY + 10)
        assert res.status == "ok"
        assert time.monotonic() - t0 >= 10  # twenty heartbeat periods went by
    finally:
        await kc.aclose()
    assert km.process is not None and km.process.pid == pid
    assert count(rec, "hung") == 0 and count(rec, "restarting") == 0
    assert km.supervisor.heartbeat_monitored


async def test_heartbeat_monitor_follows_the_options(managers: Any) -> None:
    km = managers(**FAST_HB)
    assert not km.supervisor.heartbeat_monitored  # a plain manager pings nothing
    km.autorestart = True
    assert km.supervisor.heartbeat_monitored
    km.autorestart = False
    km.supervisor.monitor_heartbeat = True
    assert km.supervisor.heartbeat_monitored
    with pytest.raises(ConfigurationError):
        AsyncKernelManager(heartbeat_interval=0)
    with pytest.raises(ConfigurationError):
        AsyncKernelManager(heartbeat_misses=0)
    with pytest.raises(ConfigurationError):
        AsyncKernelManager(restart_limit=-1)


async def test_monitoring_switched_on_later_finds_a_silent_kernel(
    managers: Any, kernel_dir: Callable[..., str]
) -> None:
    km = managers(kernel_dir("no_heartbeat"), **FAST_HB)
    rec = Recorder()
    km.add_event_listener(rec)
    await started(km)
    km.supervisor.monitor_heartbeat = True  # wakes the supervisor's heartbeat task
    hung = await rec.wait_kind("hung", timeout=READY)
    assert hung.detail["missed_heartbeats"] >= 3


def test_blocking_manager_switches_monitoring_on_from_another_thread(
    kernel_dir: Callable[..., str],
) -> None:
    km = kernelkeeper.KernelManager(kernel_dir("no_heartbeat"), **FAST_HB)
    rec = Recorder()
    km.add_event_listener(rec)
    km.start_kernel(startup_timeout=READY)
    try:
        km.wait_ready(READY)
        km.autorestart = True  # set on this thread; the supervisor runs on the library's loop
        hung = wait_for(lambda: find(rec.events, "hung"), READY)
        assert hung.detail["missed_heartbeats"] >= 3
        assert km.is_alive()  # autorestart alone does not restart a hung kernel
    finally:
        km.shutdown_kernel(now=True)


async def test_heartbeat_monitor_alone(managers: Any) -> None:
    km = managers()
    await started(km)
    assert km.connection_info is not None
    mon = HeartbeatMonitor(km.connection_info, 0.5, 2)
    stop = asyncio.Event()
    task = asyncio.create_task(mon.next_hang(lambda: not stop.is_set()))
    await asyncio.to_thread(wait_for, lambda: mon.last_beat > time.monotonic() - 0.6, READY)
    assert km.process is not None
    os.killpg(km.process.pid, signal.SIGSTOP)
    try:
        missed, silent = await asyncio.wait_for(task, READY)
    finally:
        os.killpg(km.process.pid, signal.SIGCONT)
    assert missed == 2 and silent >= 0.9


# -- races with lifecycle calls --------------------------------------------------------


async def test_shutdown_during_automatic_restart_leaves_nothing(
    managers: Any, kernel_dir: Callable[..., str], tmp_path: Path
) -> None:
    delay = tmp_path / "delay"
    env = {"PYTHONPATH": str(KERNELS_DIR / "slow_import"), "KK_TEST_START_DELAY_FILE": str(delay)}
    name = kernel_dir("slow_start", name="slow-ipykernel", argv=IPYKERNEL, env=env)
    km = managers(name, autorestart=True)
    rec = Recorder()
    km.add_event_listener(rec)
    calls = Calls(km)
    pid = await started(km)
    delay.write_text("60")  # the restart will take a minute to bind its ports
    os.kill(pid, signal.SIGKILL)
    await rec.wait_kind("restarting", timeout=READY)
    new = await asyncio.to_thread(wait_for, lambda: launched_kernel(km.connection_file, pid), READY)
    assert new is not None
    t0 = time.monotonic()
    await km.shutdown_kernel()
    assert time.monotonic() - t0 < 30  # did not wait for the restart it undoes
    await assert_gone([new], timeout=10)
    assert not km.has_kernel and km.state is KernelState.DEAD
    assert rec.kinds()[-1] == "shutdown"
    assert count(rec, "restarted") == 0 and count(rec, "dead") == 0
    assert calls.restart == 1 and not calls.dead.is_set()
    # (the conftest checks that no process or kernel file is left behind)


async def test_shutdown_among_failing_restarts_leaves_nothing(
    managers: Any, kernel_dir: Callable[..., str], tmp_path: Path
) -> None:
    # Restarts that die at once, one after the other: the shutdown lands in any
    # phase (between attempts, in a launch, in the lock) and must win in each.
    flag = tmp_path / "fail-from-now-on"
    name = kernel_dir("exit_on_flag", env={"KK_TEST_EXIT_FLAG": str(flag)})
    km = managers(name, autorestart=True, restart_limit=1000)
    rec = Recorder()
    km.add_event_listener(rec)
    pid = await started(km)
    flag.write_text("")
    os.kill(pid, signal.SIGKILL)
    await rec.wait(lambda evs: len([e for e in evs if e.detail.get("during_restart")]) >= 3, READY)
    await km.shutdown_kernel()
    seen = len(rec.events)
    assert not km.has_kernel and km.state is KernelState.DEAD
    assert not await km.is_alive()
    assert count(rec, "dead") == 0
    assert rec.kinds()[-1] == "shutdown"
    # Nothing more happens: the supervisor is gone (the conftest checks the files).
    assert [t for t in asyncio.all_tasks() if km.kernel_id[:8] in t.get_name()] == []
    assert len(rec.events) == seen


async def test_shutdown_right_after_a_death_is_not_undone(managers: Any) -> None:
    km = managers(autorestart=True)
    rec = Recorder()
    km.add_event_listener(rec)
    pid = await started(km)
    os.kill(pid, signal.SIGKILL)
    await km.shutdown_kernel()  # the intent counts before the supervisor acts
    assert not km.has_kernel and km.state is KernelState.DEAD
    assert count(rec, "restarting") == 0 and count(rec, "restarted") == 0
    assert rec.kinds()[-1] == "shutdown"


async def test_manual_restart_after_a_death_is_the_only_restart(managers: Any) -> None:
    km = managers(autorestart=True)
    rec = Recorder()
    km.add_event_listener(rec)
    pid = await started(km)
    os.kill(pid, signal.SIGKILL)
    await km.restart_kernel(now=True)
    await km.wait_ready(READY)
    assert km.process is not None and km.process.pid != pid
    assert count(rec, "restarted") == 1 and count(rec, "restarted", auto=True) == 0
    assert count(rec, "restarting", auto=True) == 0


async def test_repeated_deaths_and_restarts_keep_one_supervisor(managers: Any) -> None:
    km = managers(autorestart=True)
    rec = Recorder()
    km.add_event_listener(rec)
    await started(km)
    for n in (1, 2):
        assert km.process is not None
        os.kill(km.process.pid, signal.SIGKILL)
        await rec.wait(lambda evs: [e.kind for e in evs].count("restarted") == n, READY)  # noqa: B023
        await km.wait_ready(READY)
        sv_tasks = [
            t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("kk-supervisor-")
        ]
        mine = [t for t in sv_tasks if km.kernel_id[:8] in t.get_name()]
        assert len(mine) == 1, sv_tasks
    await km.shutdown_kernel()
    left = [t for t in asyncio.all_tasks() if km.kernel_id[:8] in t.get_name()]
    assert left == []


async def test_shutdown_after_a_shutdown_for_restart_removes_the_kept_file(
    managers: Any,
) -> None:
    km = managers(autorestart=True)
    rec = Recorder()
    km.add_event_listener(rec)
    await started(km)
    cf = Path(km.connection_file)
    await km.shutdown_kernel(restart=True)  # keeps the connection file for a start
    assert await asyncio.to_thread(cf.exists)
    assert km.state is KernelState.RESTARTING and count(rec, "restarting", auto=True) == 0
    await km.shutdown_kernel()  # ... that never comes
    assert not await asyncio.to_thread(cf.exists)
    assert km.state is KernelState.DEAD and rec.kinds()[-1] == "shutdown"

"""Shutdown escalation and start failures, driven by the fault kernels in tests/kernels/.

A kernel that ignores shutdown_request must be SIGTERMed after
``shutdown_wait_time``; one that also ignores SIGTERM must be SIGKILLed; the
children a kernel leaves in its process group must die with it, however it
dies. A kernel that cannot start must fail the start promptly and clearly,
leaving nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import kernelkeeper
from helpers import Recorder, assert_gone, until_sleeping
from kernelkeeper import (
    AsyncKernelManager,
    KernelDiedError,
    KernelSpec,
    KernelSpecError,
    KernelStartError,
    KernelState,
    KernelTimeoutError,
    NoSuchKernel,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")

READY = 60.0
WAIT = 1.0  # shutdown_wait_time for the escalation tests


def read_children(path: Path, timeout: float = READY) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return [psutil.Process(pid) for pid in json.loads(path.read_text())]


def runtime_files(runtime: Path) -> list[str]:
    return sorted(p.name for p in runtime.rglob("kernel-*"))


# -- escalation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "env", "signum"),
    [
        ("no_shutdown_reply", {}, signal.SIGTERM),
        ("no_shutdown_reply", {"KK_TEST_IGNORE_SIGTERM": "1"}, signal.SIGKILL),
        ("ignore_term", {}, signal.SIGKILL),
    ],
    ids=["no_reply", "no_reply+ignore_sigterm", "ignore_term"],
)
async def test_shutdown_escalates(
    managers: Any,
    kernel_dir: Callable[..., str],
    isolated_runtime: Path,
    script: str,
    env: dict[str, str],
    signum: int,
) -> None:
    km = managers(kernel_dir(script, env=env), shutdown_wait_time=WAIT)
    await km.start_kernel()
    await km.wait_ready(READY)
    proc = km.process
    assert proc is not None
    t0 = time.monotonic()
    await km.shutdown_kernel()
    elapsed = time.monotonic() - t0
    assert proc.exit_code == -signum
    # It was given its chance first (half of WAIT for the request, the other half
    # after SIGTERM: the whole escalation is bounded by WAIT, as in jupyter_client),
    # and then not kept waiting much longer.
    steps = 1 if signum == signal.SIGTERM else 2
    assert steps * WAIT / 2 <= elapsed < steps * WAIT / 2 + 10
    assert not km.has_kernel
    assert km.state is KernelState.DEAD
    assert runtime_files(isolated_runtime) == []


async def test_ipykernel_exits_on_the_request_after_output(isolated_runtime: Path) -> None:
    # After printing, ipykernel's control thread flushes stdout once more at the
    # end of a shutdown_request, through the iopub thread that the exit's first
    # handler stops: unless the launcher lets that request finish, the kernel
    # now and then took the flush's 10 s timeout to exit, and was SIGTERMed.
    for _ in range(8):
        km = AsyncKernelManager(shutdown_wait_time=4.0)
        await km.start_kernel()
        try:
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=READY)
            # An interrupted cell, then one that prints: the sequence that showed it.
            running = kc.execute(
                "import os, time; print(os.getpid(), 'zz', flush=True); time.sleep(30)",
                reply=True,
                timeout=READY,
                stop_on_error=False,  # or the next request may be aborted
            )
            while "zz" not in (m := await kc.get_iopub_msg(timeout=READY))["content"].get(
                "text", ""
            ):
                pass
            await until_sleeping(int(m["content"]["text"].split()[0]))
            await km.interrupt_kernel()
            assert (await running)["content"]["ename"] == "KeyboardInterrupt"
            res = await kc.run_cell("print('out')")
            assert res.stdout == "out\n"
            await kc.aclose()
            proc = km.process
            assert proc is not None
            await km.shutdown_kernel()
            assert proc.exit_code == 0  # it left on the request: no SIGTERM
        finally:
            await km.shutdown_kernel(now=True)
    assert runtime_files(isolated_runtime) == []


async def test_blocking_shutdown_escalates(kernel_dir: Callable[..., str]) -> None:
    km = kernelkeeper.KernelManager(kernel_dir("ignore_term"), shutdown_wait_time=WAIT)
    try:
        await asyncio.to_thread(km.start_kernel)
        await asyncio.to_thread(km.wait_ready, READY)
        proc = km.process
        await asyncio.to_thread(km.shutdown_kernel)
        assert proc.exit_code == -signal.SIGKILL
        assert not km.has_kernel
    finally:
        await asyncio.to_thread(km.shutdown_kernel, now=True)


async def test_finish_shutdown_escalates(managers: Any, kernel_dir: Callable[..., str]) -> None:
    km = managers(kernel_dir("no_shutdown_reply"))
    await km.start_kernel()
    await km.wait_ready(READY)
    proc = km.process
    await km.request_shutdown()
    t0 = time.monotonic()
    await km.finish_shutdown(waittime=WAIT)
    assert WAIT / 2 <= time.monotonic() - t0 < WAIT / 2 + 10
    assert proc.exit_code == -signal.SIGTERM
    await km.cleanup_resources()
    assert not km.has_kernel


@pytest.mark.parametrize(
    ("script", "signum"),
    [("no_shutdown_reply", signal.SIGTERM), ("ignore_term", signal.SIGKILL)],
)
async def test_restart_escalates(
    managers: Any, kernel_dir: Callable[..., str], script: str, signum: int
) -> None:
    km = managers(kernel_dir(script), shutdown_wait_time=WAIT)
    await km.start_kernel()
    kc = km.client()
    try:
        kc.start_channels()
        await kc.wait_for_ready(READY)
        info = km.get_connection_info()
        old = km.process
        await km.restart_kernel()
        assert old.exit_code == -signum
        assert km.process.pid != old.pid
        assert await km.is_alive()
        assert km.get_connection_info() == info
        await kc.wait_for_ready(READY)
        res = await kc.run_cell("import os; print(os.getpid())", timeout=30)
        assert res.stdout.strip() == str(km.process.pid)
    finally:
        await kc.aclose()
    await km.shutdown_kernel(now=True)
    assert not km.has_kernel


# -- children in the kernel's process group --------------------------------------------


@pytest.fixture
def children_kernel(kernel_dir: Callable[..., str], tmp_path: Path) -> tuple[str, Path]:
    pids = tmp_path / "children.json"
    name = kernel_dir("spawn_children", env={"KK_TEST_CHILDREN_FILE": str(pids)})
    return name, pids


async def test_shutdown_kills_children(managers: Any, children_kernel: tuple[str, Path]) -> None:
    name, pids = children_kernel
    km = managers(name)
    await km.start_kernel()
    await km.wait_ready(READY)
    children = read_children(pids)
    assert len(children) == 2
    assert all(c.is_running() for c in children)
    proc = km.process
    await km.shutdown_kernel()
    assert proc.exit_code == 0  # the kernel left on request, leaving its children
    await assert_gone(children, timeout=5, reap=True)


async def test_restart_kills_old_children(managers: Any, children_kernel: tuple[str, Path]) -> None:
    name, pids = children_kernel
    km = managers(name)
    await km.start_kernel()
    await km.wait_ready(READY)
    old_children = read_children(pids)
    for now in (False, True):
        await km.restart_kernel(now=now)
        await assert_gone(old_children, timeout=5, reap=True)
        await km.wait_ready(READY)  # by now the new kernel has rewritten the file
        children = read_children(pids)
        assert not {c.pid for c in children} & {c.pid for c in old_children}
        assert all(c.is_running() and c.ppid() == km.process.pid for c in children)
        old_children = children
    await km.shutdown_kernel(now=True)
    await assert_gone(old_children, timeout=5, reap=True)


async def test_group_dies_with_the_kernel(
    managers: Any, children_kernel: tuple[str, Path], isolated_runtime: Path
) -> None:
    """Only the kernel process is killed, from outside: its children must not survive it."""
    name, pids = children_kernel
    km = managers(name)
    rec = Recorder()
    km.add_event_listener(rec)
    await km.start_kernel()
    await km.wait_ready(READY)
    children = read_children(pids)
    os.kill(km.process.pid, signal.SIGKILL)
    died = await rec.wait_kind("died")
    assert died.detail["exit_code"] == -signal.SIGKILL
    assert km.state is KernelState.DEAD
    assert not await km.is_alive()
    await assert_gone(children, timeout=5, reap=True)
    await km.shutdown_kernel()
    assert not km.has_kernel
    assert runtime_files(isolated_runtime) == []


# -- start failures --------------------------------------------------------------------


@pytest.mark.parametrize("api", ["async", "sync"])
async def test_missing_executable(isolated_runtime: Path, api: str) -> None:
    # A spec given directly is not checked before launch: launch reports it.
    spec = KernelSpec(argv=("/nonexistent/kernel", "-f", "{connection_file}"), display_name="x")
    t0 = time.monotonic()
    if api == "async":
        km: Any = AsyncKernelManager(kernel_spec=spec)
        with pytest.raises(KernelStartError, match="/nonexistent/kernel") as info:
            await km.start_kernel(startup_timeout=60)
    else:
        km = kernelkeeper.KernelManager(kernel_spec=spec)
        with pytest.raises(KernelStartError, match="/nonexistent/kernel") as info:
            await asyncio.to_thread(km.start_kernel, startup_timeout=60)
    assert time.monotonic() - t0 < 5
    assert not isinstance(info.value, KernelDiedError)  # it never ran
    assert not km.has_kernel
    assert km.state is KernelState.DEAD
    assert Path(km.connection_file).parent == isolated_runtime
    assert runtime_files(isolated_runtime) == []  # so the connection file is not there


@pytest.mark.parametrize("api", ["async", "sync"])
async def test_missing_executable_in_installed_spec(
    kernel_dir: Callable[..., str], isolated_runtime: Path, api: str
) -> None:
    # An installed kernelspec is checked when it is looked up: a KernelSpecError
    # naming the executable, before anything is written or started.
    name = kernel_dir(
        "slow_start", name="missing", argv=["/nonexistent/kernel", "-f", "{connection_file}"]
    )
    km: Any = AsyncKernelManager(name) if api == "async" else kernelkeeper.KernelManager(name)
    with pytest.raises(KernelSpecError, match="/nonexistent/kernel"):
        if api == "async":
            await km.start_kernel(startup_timeout=60)
        else:
            await asyncio.to_thread(km.start_kernel, startup_timeout=60)
    assert not km.has_kernel
    assert runtime_files(isolated_runtime) == []


@pytest.mark.parametrize("api", ["async", "sync"])
@pytest.mark.parametrize(
    ("env", "code"),
    [({}, 3), ({"KK_TEST_EXIT_AFTER": "1"}, 3), ({"KK_TEST_EXIT_CODE": "7"}, 7)],
    ids=["at_once", "after_1s", "code_7"],
)
async def test_exit_on_start_fails_promptly(
    kernel_dir: Callable[..., str], isolated_runtime: Path, api: str, env: dict[str, str], code: int
) -> None:
    name = kernel_dir("exit_on_start", env=env)
    t0 = time.monotonic()
    with pytest.raises(KernelDiedError) as info:
        if api == "async":
            await kernelkeeper.async_start_new_kernel(startup_timeout=60, kernel_name=name)
        else:
            await asyncio.to_thread(kernelkeeper.start_new_kernel, 60, name)
    # Not the 60 s startup timeout: the start failed as soon as the process exited.
    assert time.monotonic() - t0 < 10
    err = info.value
    assert err.exit_code == code
    last_line = f"exit_on_start: simulated failure (code {code})"
    assert last_line in err.stderr_tail
    assert "RuntimeError: simulated kernel startup failure" in err.stderr_tail
    assert last_line in str(err)
    assert f"exit code {code}" in str(err)
    assert runtime_files(isolated_runtime) == []


async def test_ipykernel_dying_at_start(managers: Any, isolated_runtime: Path) -> None:
    """The handshake path: the launcher dies before it reports its ports."""
    km = managers()
    assert km.ipykernel
    t0 = time.monotonic()
    with pytest.raises(KernelDiedError) as info:
        await km.start_kernel(extra_arguments=["--no-such-flag"], startup_timeout=60)
    assert time.monotonic() - t0 < 10
    assert info.value.exit_code == 2
    assert "unrecognized arguments: --no-such-flag" in info.value.stderr_tail
    assert not km.has_kernel
    assert km.state is KernelState.DEAD
    assert runtime_files(isolated_runtime) == []


async def test_startup_timeout(kernel_dir: Callable[..., str], isolated_runtime: Path) -> None:
    name = kernel_dir("slow_start", env={"KK_TEST_START_DELAY": "60"})
    t0 = time.monotonic()
    with pytest.raises(KernelTimeoutError):
        await kernelkeeper.async_start_new_kernel(startup_timeout=1, kernel_name=name)
    assert 1 <= time.monotonic() - t0 < 10
    assert runtime_files(isolated_runtime) == []
    # The leak check of the fixture proves the slow kernel was killed.


@pytest.mark.parametrize("api", ["async", "sync"])
async def test_unknown_kernel_name(
    kernel_dir: Callable[..., str], isolated_runtime: Path, api: str
) -> None:
    kernel_dir("slow_start")  # something to list
    with pytest.raises(NoSuchKernel) as info:
        if api == "async":
            await kernelkeeper.async_start_new_kernel(kernel_name="no-such-kernel-xyz")
        else:
            await asyncio.to_thread(kernelkeeper.start_new_kernel, kernel_name="no-such-kernel-xyz")
    err = info.value
    assert isinstance(err, LookupError)
    assert "no-such-kernel-xyz" in str(err)
    assert "slow-start" in err.available or "spec/slow-start" in err.available
    assert "slow-start" in str(err)
    assert runtime_files(isolated_runtime) == []


async def test_broken_kernel_json(kernel_dir: Callable[..., str], tmp_path: Path) -> None:
    kernel_dir("slow_start")  # puts tmp_path/jupyter on JUPYTER_PATH
    broken = tmp_path / "jupyter" / "kernels" / "broken"
    broken.mkdir()
    (broken / "kernel.json").write_text('{"argv": ["python", "-f", "{connection_file}"')
    km = AsyncKernelManager("broken")
    with pytest.raises(KernelSpecError) as info:
        await km.start_kernel()
    assert isinstance(info.value, ValueError)
    assert "broken" in str(info.value)
    assert not km.has_kernel
    with pytest.raises(KernelSpecError):
        kernelkeeper.start_new_kernel(kernel_name="broken")


async def test_slow_start_becomes_ready(kernel_dir: Callable[..., str]) -> None:
    name = kernel_dir("slow_start", env={"KK_TEST_START_DELAY": "2"})
    t0 = time.monotonic()
    km, kc = await kernelkeeper.async_start_new_kernel(startup_timeout=60, kernel_name=name)
    try:
        assert time.monotonic() - t0 >= 2  # it really was slow, and we waited for it
        res = await kc.run_cell("print('up')", timeout=30)
        assert res.stdout == "up\n"
    finally:
        await kc.aclose()
        await km.shutdown_kernel()
    assert not km.has_kernel

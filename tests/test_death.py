"""A kernel that dies fails every pending wait at once, with KernelDiedError.

Real kernels die here in the ways they do in life: ``os._exit`` in a cell,
SIGKILL from outside. The client learns of it from its manager (the
process) or, without one, from its heartbeat; a restart brings the same
client back. Closing the channels fails pending waits with NotRunningError.
The blocking face, nbclient and the CLI see the same deaths promptly.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import Recorder, wait_for
from kernelkeeper import (
    AsyncKernelClient,
    AsyncKernelManager,
    KernelDiedError,
    KernelManager,
    NotRunningError,
    async_start_new_kernel,
    start_new_kernel,
)

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    pytest.mark.timeout(120),
]

READY = 60.0  # generous: 2 cores, other suites run at the same time
REPLY = 30.0
# "At once": a death is an event (pidfd), so this is only a guard against a hang.
PROMPT = 15.0
EXIT3 = "import os; os._exit(3)"
SLEEP = "import time; time.sleep(120)"


@pytest.fixture
async def akernel() -> AsyncIterator[tuple[AsyncKernelManager, AsyncKernelClient]]:
    km, kc = await async_start_new_kernel(startup_timeout=READY)
    try:
        yield km, kc
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=True)


async def settle(aws: list[Any], timeout: float = PROMPT) -> list[Any]:
    """Results or exceptions of ``aws``; fails the test if they take longer than ``timeout``."""
    return await asyncio.wait_for(asyncio.gather(*aws, return_exceptions=True), timeout)


def assert_died(exc: object, exit_code: int | None) -> KernelDiedError:
    assert isinstance(exc, KernelDiedError), repr(exc)
    assert exc.exit_code == exit_code
    assert isinstance(exc.stderr_tail, str)
    return exc


# -- the client learns of the death from its manager ------------------------------------


async def test_os_exit_fails_every_pending_wait(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    _km, kc = akernel
    # Sent in this order, so the kernel dies on the first with the others queued behind it.
    dying = kc.execute(EXIT3, reply=True, timeout=None)
    info = kc.kernel_info(reply=True)
    cell = asyncio.ensure_future(kc.run_cell("1 + 1"))
    interactive = asyncio.ensure_future(kc.execute_interactive("2 + 2", output_hook=print))
    t0 = time.monotonic()
    results = await settle([dying, info, cell, interactive])
    assert time.monotonic() - t0 < PROMPT
    for r in results:
        e = assert_died(r, 3)
        assert e.signal is None
        assert "exit code 3" in str(e)
    # A new request to the dead kernel fails at once, with or without reply=True.
    with pytest.raises(KernelDiedError):
        kc.execute("1")
    with pytest.raises(KernelDiedError) as info_err:
        await kc.kernel_info(reply=True, timeout=REPLY)
    assert info_err.value.exit_code == 3
    with pytest.raises(KernelDiedError):
        await kc.run_cell("1")
    assert not await kc.is_alive()
    # Readers of the queues get what had arrived, then do not wait for what cannot
    # come: a timed wait ends with queue.Empty at once (jupyter_client code then
    # asks is_alive()), an untimed one raises KernelDiedError.
    await kc.iopub_channel.get_msgs()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        await kc.get_shell_msg(timeout=60)
    assert time.monotonic() - t0 < PROMPT
    with pytest.raises(KernelDiedError):
        await kc.get_iopub_msg()


async def test_sigkill_from_outside_reports_the_signal(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    km, kc = akernel
    pending = kc.execute(SLEEP, reply=True)
    cell = asyncio.ensure_future(kc.run_cell("print('never')"))
    reader = asyncio.ensure_future(kc.get_stdin_msg())  # nothing queued on stdin
    timed_reader = asyncio.ensure_future(kc.get_control_msg(timeout=120))
    await asyncio.to_thread(wait_for, lambda: len(kc.stdin_channel.queue._getters) == 1, PROMPT)
    await km.signal_kernel(signal.SIGKILL)
    for r in await settle([pending, cell, reader]):
        e = assert_died(r, -signal.SIGKILL)
        assert e.signal == signal.SIGKILL
        assert "SIGKILL" in str(e)
    (timed,) = await settle([timed_reader])
    assert isinstance(timed, queue.Empty), repr(timed)


async def test_manual_restart_brings_the_same_client_back(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    km, kc = akernel
    (r,) = await settle([kc.execute(EXIT3, reply=True)])
    assert_died(r, 3)
    await km.restart_kernel(now=True)
    # Right after the restart, with no turn of the loop in between: no stale death.
    msg_id = kc.kernel_info()
    assert isinstance(msg_id, str)
    await kc.wait_for_ready(timeout=READY)
    res = await kc.run_cell("print('back'); 6 * 7", timeout=REPLY)
    assert res.stdout == "back\n" and res.result() == {"text/plain": "42"}
    # ... and the next death is noticed too.
    (r,) = await settle([kc.execute(EXIT3, reply=True)])
    assert_died(r, 3)


async def test_automatic_restart_brings_the_same_client_back() -> None:
    km = AsyncKernelManager(autorestart=True)
    rec = Recorder()
    km.add_event_listener(rec)
    await km.start_kernel(startup_timeout=READY)
    kc = km.client()
    try:
        kc.start_channels()
        await kc.wait_for_ready(timeout=READY)
        (r,) = await settle([kc.run_cell(EXIT3)])
        assert_died(r, 3)
        await rec.wait_kind("restarted", timeout=READY)
        await kc.wait_for_ready(timeout=READY)
        assert (await kc.run_cell("1 + 1", timeout=REPLY)).result() == {"text/plain": "2"}
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=True)


async def test_death_watch_is_owned_by_the_client(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    _km, kc = akernel
    watch = kc._death_watch
    assert watch.is_alive()
    task = watch._task
    assert task is not None
    await kc.aclose()
    assert task.done() and not watch.is_alive()
    kc.start_channels()
    assert watch.is_alive()


# -- without a manager: the heartbeat -----------------------------------------------------


async def test_manager_less_client_learns_death_from_heartbeat(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    km, _ = akernel
    other = AsyncKernelClient(km.connection_file, hb_max_misses=3)
    assert other.manager is None
    try:
        other.start_channels()
        await other.wait_for_ready(timeout=READY)
        pending = other.execute(SLEEP, reply=True)
        cell = asyncio.ensure_future(other.run_cell("1"))
        await km.signal_kernel(signal.SIGKILL)
        # 3 beats of time_to_dead (1 s) each, plus slack for a loaded machine.
        limit = 3 * other.hb_channel.time_to_dead + PROMPT
        for r in await settle([pending, cell], timeout=limit):
            e = assert_died(r, None)
            assert "heartbeat" in str(e)
        with pytest.raises(KernelDiedError):
            other.kernel_info()
        assert not await other.is_alive()
    finally:
        await other.aclose()


async def test_no_heartbeat_kernel(kernel_dir: Callable[..., str]) -> None:
    """A kernel that never answers pings: dead to a client that only has the heartbeat,
    alive to one whose manager sees the process."""
    km = AsyncKernelManager(kernel_dir("no_heartbeat"))
    await km.start_kernel(startup_timeout=READY)
    managed = km.client(hb_max_misses=1)
    bare = AsyncKernelClient(km.connection_file, hb_max_misses=2)
    try:
        for kc in (managed, bare):
            kc.hb_channel.time_to_dead = 0.3
            kc.start_channels()
            await kc.wait_for_ready(timeout=READY)
        # The managed client misses beats and still works: the process, not
        # the heartbeat, decides.
        await asyncio.to_thread(wait_for, lambda: managed.hb_channel.missed >= 2, PROMPT)
        res = await managed.run_cell("print('alive')", timeout=REPLY)
        assert res.stdout == "alive\n"
        # The bare client has only the heartbeat to go by.
        pending = bare.execute(SLEEP, reply=True)
        (r,) = await settle([pending])
        assert_died(r, None)
        assert not await bare.is_alive()
        assert await managed.is_alive()
    finally:
        await bare.aclose()
        await managed.aclose()
        await km.shutdown_kernel(now=True)


# -- closing the channels with requests pending -------------------------------------------


@pytest.mark.parametrize("how", ["aclose", "stop_channels"])
async def test_closing_fails_pending_waits_with_not_running(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient], how: str
) -> None:
    _km, kc = akernel
    tasks = [
        asyncio.ensure_future(kc.execute(SLEEP, reply=True)),
        asyncio.ensure_future(kc.kernel_info(reply=True)),
        asyncio.ensure_future(kc.run_cell("1")),
    ]
    # Let each task register its wait before closing (an event, not a sleep).
    await asyncio.to_thread(wait_for, lambda: len(kc.router.replies) == 3, PROMPT)
    if how == "aclose":
        await kc.aclose()
    else:
        kc.stop_channels()
    for r in await settle(tasks):
        assert isinstance(r, NotRunningError), repr(r)
    assert not any(t.cancelled() for t in tasks)


# -- the blocking face --------------------------------------------------------------------


def test_blocking_face_sees_the_death_and_restart() -> None:
    km, kc = start_new_kernel(startup_timeout=READY)
    try:
        t0 = time.monotonic()
        with pytest.raises(KernelDiedError) as e:
            kc.run_cell(EXIT3)
        assert e.value.exit_code == 3
        with pytest.raises(KernelDiedError):
            kc.execute_interactive("1", output_hook=lambda m: None)
        with pytest.raises(KernelDiedError):
            kc.execute("1", reply=True, timeout=REPLY)
        assert time.monotonic() - t0 < PROMPT
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=READY)
        assert kc.run_cell("1 + 2", timeout=REPLY).result() == {"text/plain": "3"}
        with pytest.raises(KernelDiedError) as e2:
            kc.execute_interactive(EXIT3, output_hook=lambda m: None)
        assert e2.value.exit_code == 3
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_blocking_stop_channels_from_another_thread() -> None:
    km, kc = start_new_kernel(startup_timeout=READY)
    try:
        errors: list[BaseException] = []

        def wait_reply() -> None:
            try:
                kc.execute(SLEEP, reply=True)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=wait_reply)
        t.start()
        wait_for(lambda: kc.async_client.router.replies, PROMPT)
        kc.stop_channels()
        t.join(PROMPT)
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], NotRunningError), errors
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# -- nbclient -------------------------------------------------------------------------------


def dying_notebook() -> Any:
    from nbformat.v4 import new_code_cell, new_notebook

    return new_notebook(
        cells=[new_code_cell("print('before')"), new_code_cell(EXIT3), new_code_cell("1")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )


def notebook_client(nb: Any, km: Any, tmp_path: Path) -> Any:
    nbclient = pytest.importorskip("nbclient")
    return nbclient.NotebookClient(
        nb,
        km=km,
        timeout=60,
        startup_timeout=READY,
        resources={"metadata": {"path": str(tmp_path)}},
    )


def check_dead_notebook(nb: Any, elapsed: float) -> None:
    # nbclient waits for the reply with shell get_msg(timeout=cell timeout); on the
    # death that raises queue.Empty at once, nbclient asks kc.is_alive() and raises
    # its own DeadKernelError. The cell timeout (60 s) is far away.
    assert elapsed < 60 / 2, f"not prompt: {elapsed:.1f} s"
    assert nb.cells[0].outputs[0]["text"] == "before\n"
    assert nb.cells[2].outputs == []


async def test_nbclient_async_manager_sees_the_death_promptly(tmp_path: Path) -> None:
    from nbclient.exceptions import DeadKernelError

    km = AsyncKernelManager()
    nb = dying_notebook()
    t0 = time.monotonic()
    try:
        with pytest.raises(DeadKernelError):
            await notebook_client(nb, km, tmp_path).async_execute()
        check_dead_notebook(nb, time.monotonic() - t0)
    finally:
        await km.shutdown_kernel(now=True)


def test_nbclient_blocking_manager_sees_the_death_promptly(tmp_path: Path) -> None:
    from nbclient.exceptions import DeadKernelError

    km = KernelManager()
    nb = dying_notebook()
    t0 = time.monotonic()
    try:
        with pytest.raises(DeadKernelError):
            notebook_client(nb, km, tmp_path).execute()
        check_dead_notebook(nb, time.monotonic() - t0)
    finally:
        km.shutdown_kernel(now=True)


# -- the command line -----------------------------------------------------------------------


def run_cli(runtime: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime))
    return subprocess.run(
        [sys.executable, "-m", "kernelkeeper", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_run_reports_a_dead_kernel(isolated_runtime: Path) -> None:
    t0 = time.monotonic()
    code = "import os; os.write(2, b'last words from the kernel\\n'); os._exit(3)"
    r = run_cli(isolated_runtime, "run", "-c", code)
    assert time.monotonic() - t0 < 60
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "Kernel died" in r.stderr and "exit code 3" in r.stderr
    # The death report carries the kernel's stderr tail.
    report = r.stderr[r.stderr.index("kernelkeeper: Kernel died") :]
    assert "last words from the kernel" in report
    assert not [p.name for p in isolated_runtime.iterdir() if p.name.startswith("kernel-")]


def test_cli_run_exit_codes(isolated_runtime: Path) -> None:
    ok = run_cli(isolated_runtime, "run", "-c", "print('fine')")
    assert (ok.returncode, ok.stdout) == (0, "fine\n"), ok.stderr
    err = run_cli(isolated_runtime, "run", "-c", "1/0")
    assert err.returncode == 1, err.stderr
    assert "ZeroDivisionError" in err.stderr
    usage = run_cli(isolated_runtime, "run", "-k", "no-such-kernel-kk", "-c", "1")
    assert usage.returncode == 2, usage.stderr

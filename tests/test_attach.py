"""Managing a kernel we did not start: attached by its connection file.

The kernels here are started by jupyter_client's own ``AsyncKernelManager``
(a test dependency), the way a notebook server or another tool would have
started them; kernelkeeper only gets the connection file (and, in some
tests, the pid).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jupyter_client
import psutil
import pytest

import kernelkeeper
from kernelkeeper import AsyncKernelManager, KernelState, attach_kernel, find_connection_file

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

READY = 60.0
SLEEP = "import time; time.sleep(120)"


class Foreign:
    """A kernel started by jupyter_client: its manager, pid and connection file."""

    def __init__(self, jkm: Any) -> None:
        self.jkm = jkm
        self.connection_file: str = jkm.connection_file
        self.pid: int = jkm.provisioner.pid


@pytest.fixture
async def foreign(isolated_runtime: Path) -> AsyncIterator[Foreign]:
    jkm = jupyter_client.AsyncKernelManager(
        connection_file=str(isolated_runtime / "kernel-foreign-1.json")
    )
    await jkm.start_kernel()
    jkc = jkm.client()
    jkc.start_channels()
    try:
        await jkc.wait_for_ready(timeout=READY)  # attach to a kernel that is up
    finally:
        jkc.stop_channels()
    try:
        yield Foreign(jkm)
    finally:
        await jkm.shutdown_kernel(now=True)
        await jkm.cleanup_resources()


async def drive(km: AsyncKernelManager) -> kernelkeeper.AsyncKernelClient:
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=READY)
    result = await kc.run_cell("6 * 7", timeout=READY)
    assert result.result() == {"text/plain": "42"}
    return kc


async def interrupted(km: AsyncKernelManager, kc: kernelkeeper.AsyncKernelClient) -> None:
    """Start a long cell, interrupt it, and see it end with KeyboardInterrupt."""
    busy = asyncio.Event()

    def on_output(msg: Any) -> None:
        if msg.get("msg_type") == "stream":
            busy.set()

    cell = asyncio.ensure_future(
        kc.run_cell(f"print('go', flush=True); {SLEEP}", timeout=READY, on_output=on_output)
    )
    await asyncio.wait_for(busy.wait(), READY)
    await km.interrupt_kernel()
    result = await asyncio.wait_for(cell, READY)
    assert result.error is not None and result.error["ename"] == "KeyboardInterrupt"


async def test_attach_by_connection_file_drive_interrupt_shutdown(foreign: Foreign) -> None:
    km = AsyncKernelManager.from_connection_file(foreign.connection_file)
    assert km.state is KernelState.IDLE and km.has_kernel
    assert km.kernel_name == "python3"  # from the file
    assert await km.is_alive()  # by heartbeat: no pid given
    assert km.ready.done()
    assert km.get_connection_info()["key"] == foreign.jkm.session.key
    kc = await drive(km)
    try:
        await interrupted(km, kc)  # no pid: an interrupt_request
        # The kernel still works after the interrupt.
        assert (await kc.run_cell("1 + 1", timeout=READY)).result() == {"text/plain": "2"}
    finally:
        await kc.aclose()
    await km.shutdown_kernel()
    assert km.state is KernelState.DEAD
    assert not await km.is_alive()
    proc = psutil.Process(foreign.pid)
    proc.wait(timeout=30)  # the shutdown_request ended it (jupyter_client reaps it)
    # Its files are jupyter_client's: left for their owner to remove.
    assert await asyncio.to_thread(os.path.exists, foreign.connection_file)


async def test_attach_with_pid_signals(foreign: Foreign) -> None:
    km = attach_kernel(foreign.connection_file, pid=foreign.pid)
    assert await km.is_alive()
    kc = await drive(km)
    try:
        await interrupted(km, kc)  # pid known and ours: SIGINT
    finally:
        await kc.aclose()
    await km.shutdown_kernel()
    assert not await km.is_alive()
    psutil.Process(foreign.pid).wait(timeout=30)


async def test_kill_of_attached_kernel_is_seen(foreign: Foreign) -> None:
    km = attach_kernel(foreign.connection_file, pid=foreign.pid)
    kc = await drive(km)
    try:
        dead = asyncio.ensure_future(km.process.wait()) if km.process else None
        assert dead is not None
        os.kill(foreign.pid, 9)
        assert await asyncio.wait_for(dead, READY) is False
        assert not await km.is_alive()
    finally:
        await kc.aclose()
    await km.shutdown_kernel()


async def test_restart_of_attached_kernel_keeps_ports_and_key(foreign: Foreign) -> None:
    km = AsyncKernelManager.from_connection_file(foreign.connection_file, pid=foreign.pid)
    info = km.connection_info
    kc = await drive(km)
    try:
        await km.restart_kernel()
        # The new kernel is ours, on the same ports and key, at the same file.
        assert km.connection_info is not None and km.process is not None
        assert km.connection_info.ports == info.ports and km.connection_info.key == info.key
        assert km.process.pid != foreign.pid
        psutil.Process(foreign.pid).wait(timeout=30)
        await kc.wait_for_ready(timeout=READY)
        assert (await kc.run_cell("2 + 3", timeout=READY)).result() == {"text/plain": "5"}
    finally:
        await kc.aclose()
    await km.shutdown_kernel()
    assert not await asyncio.to_thread(os.path.exists, foreign.connection_file)  # ours now


async def test_not_owned_kernel_is_left_running(foreign: Foreign) -> None:
    km = AsyncKernelManager.from_connection_file(foreign.connection_file, owns_kernel=False)
    assert not km.owns_kernel
    with pytest.raises(kernelkeeper.LifecycleError):
        await km.restart_kernel()
    await km.shutdown_kernel()
    assert not km.has_kernel
    assert await foreign.jkm.is_alive()


async def test_find_then_attach_by_id_fragment(foreign: Foreign) -> None:
    path = find_connection_file("foreign-1")
    assert path == foreign.connection_file
    km = attach_kernel(path)
    kc = await drive(km)
    await kc.aclose()
    await km.shutdown_kernel()


async def test_load_connection_info_on_a_fresh_manager(foreign: Foreign) -> None:
    # What jupyter_client's MultiKernelManager does for kernels it finds on disk.
    km = AsyncKernelManager(owns_kernel=False)
    km.load_connection_info(foreign.jkm.get_connection_info())
    assert await km.is_alive()
    kc = await drive(km)
    await kc.aclose()
    await km.shutdown_kernel()
    assert await foreign.jkm.is_alive()


async def test_attach_to_a_kernel_of_unknown_type(foreign: Foreign) -> None:
    info = dict(foreign.jkm.get_connection_info())
    info["kernel_name"] = "kk-no-such-kernel"  # installed nowhere here
    km = AsyncKernelManager()
    km.load_connection_info(info)
    assert km.kernel_name == "kk-no-such-kernel"
    kc = await drive(km)  # client() needs no spec
    try:
        await interrupted(km, kc)  # nor does interrupt_kernel()
    finally:
        await kc.aclose()
    await km.shutdown_kernel()
    psutil.Process(foreign.pid).wait(timeout=30)

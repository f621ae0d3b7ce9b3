"""Many kernels at once: no port collisions, no crossed wires, nothing left behind.

Each kernel is asked for its pid through its own client and must answer with
the pid its manager launched: a port taken by the wrong kernel would show up as
a mismatch (or a hang), not just as an error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kernelkeeper
from kernelkeeper import AsyncKernelClient, AsyncKernelManager

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")

STARTUP = 120.0  # 2 cores, 32 ipykernels importing at the same time


def runtime_files(runtime: Path) -> list[str]:
    return sorted(p.name for p in runtime.rglob("kernel-*"))


async def start_many(n: int, **kwargs: Any) -> list[tuple[AsyncKernelManager, AsyncKernelClient]]:
    results = await asyncio.gather(
        *(kernelkeeper.async_start_new_kernel(startup_timeout=STARTUP, **kwargs) for _ in range(n)),
        return_exceptions=True,
    )
    started = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        await stop_all(started)  # type: ignore[arg-type]
        raise AssertionError(f"{len(failed)} of {n} starts failed: {failed[:3]!r}")
    return started  # type: ignore[return-value]


async def stop_all(pairs: list[tuple[AsyncKernelManager, AsyncKernelClient]]) -> None:
    await asyncio.gather(*(kc.aclose() for _, kc in pairs))
    results = await asyncio.gather(
        *(km.shutdown_kernel() for km, _ in pairs), return_exceptions=True
    )
    assert [r for r in results if r is not None] == []


async def check_distinct_and_answering(
    pairs: list[tuple[AsyncKernelManager, AsyncKernelClient]],
) -> None:
    pids = [km.process.pid for km, _ in pairs]
    assert len(set(pids)) == len(pairs)
    ports = [p for km, _ in pairs for p in km.connection_info.ports.values()]
    assert len(set(ports)) == len(ports), "two kernels share a port"
    answers = await asyncio.gather(
        *(kc.run_cell("import os; print(os.getpid())", timeout=STARTUP) for _, kc in pairs)
    )
    assert [int(a.stdout) for a in answers] == pids


@pytest.mark.timeout(300)
async def test_32_async_kernels_two_rounds(isolated_runtime: Path) -> None:
    for _ in range(2):
        pairs = await start_many(32)
        try:
            assert len(pairs) == 32
            await check_distinct_and_answering(pairs)
        finally:
            procs = [km.process for km, _ in pairs]
            await stop_all(pairs)
        assert all(not km.has_kernel for km, _ in pairs)
        assert [p.exit_code for p in procs] == [0] * 32  # every one left on request
        assert runtime_files(isolated_runtime) == []


@pytest.mark.timeout(200)
def test_8_blocking_kernels_from_threads(isolated_runtime: Path) -> None:
    def start(_: int) -> tuple[kernelkeeper.KernelManager, kernelkeeper.BlockingKernelClient]:
        return kernelkeeper.start_new_kernel(startup_timeout=STARTUP)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(start, i) for i in range(8)]
        done = [f.result() for f in concurrent.futures.as_completed(futures)]
    try:
        pids = [km.process.pid for km, _ in done]
        assert len(set(pids)) == 8
        ports = [p for km, _ in done for p in km.connection_info.ports.values()]
        assert len(set(ports)) == len(ports)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda pair: pair[1].run_cell("import os; print(os.getpid())"), done)
            )
        assert [int(a.stdout) for a in answers] == pids
    finally:

        def stop(pair: tuple[kernelkeeper.KernelManager, Any]) -> None:
            km, kc = pair
            kc.stop_channels()
            km.shutdown_kernel()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(stop, done))
    assert all(not km.has_kernel for km, _ in done)
    assert runtime_files(isolated_runtime) == []


@pytest.mark.timeout(200)
async def test_8_preassigned_port_kernels(
    kernel_dir: Callable[..., str], isolated_runtime: Path
) -> None:
    """Kernels that are not ipykernel-launched get ports picked by the manager."""
    name = kernel_dir("slow_start", env={"KK_TEST_START_DELAY": "0"})
    pairs = await start_many(8, kernel_name=name)
    try:
        assert not pairs[0][0].ipykernel  # really the pre-assigned path
        await check_distinct_and_answering(pairs)
    finally:
        await stop_all(pairs)
    assert runtime_files(isolated_runtime) == []

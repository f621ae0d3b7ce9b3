"""Culling: an idle kernel is ended, a busy or connected one spared as the policy says."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import Recorder, wait_for
from kernelkeeper.culling import CullPolicy, KernelActivityView, cull_reason
from kernelkeeper.multikernel import AsyncMultiKernelManager, NoSuchKernelId

READY = 60.0
IDLE = 0.5  # seconds of idleness before a kernel may be culled


async def until(pred: Callable[[], Any], timeout: float = READY) -> Any:
    return await asyncio.to_thread(wait_for, pred, timeout)


async def cull_until(mkm: AsyncMultiKernelManager, kid: str) -> list[str]:
    """Run checks until ``kid`` is culled (it must first be idle IDLE seconds)."""
    deadline = time.monotonic() + READY
    while time.monotonic() < deadline:
        culled = await mkm.cull_idle()
        if kid in culled:
            return culled
        await asyncio.sleep(0.05)  # a polling interval, not an ordering
    raise TimeoutError(f"{kid} was not culled within {READY} s")


def test_policy_decisions() -> None:
    p = CullPolicy(idle_timeout=10, overrides={"r": CullPolicy(idle_timeout=5, cull_busy=True)})

    def view(state: str = "idle", name: str = "python3", conns: int = 0) -> KernelActivityView:
        return KernelActivityView("k", name, state, last_activity=100.0, connections=conns)

    assert cull_reason(p, view(), now=105) is None
    assert cull_reason(p, view(), now=111) == "culled: idle for 11 s"
    assert cull_reason(p, view("busy"), now=111) is None
    assert cull_reason(p, view(conns=1), now=111) is None
    assert cull_reason(dataclasses.replace(p, cull_connected=True), view(conns=1), 111)
    assert cull_reason(p, view("busy", "r"), now=106) == "culled: busy for 6 s"
    assert cull_reason(p, view("starting"), now=1000) is None
    assert cull_reason(CullPolicy(), view(), now=1e9) is None
    with pytest.raises(ValueError):
        CullPolicy(interval=0)


async def test_idle_is_culled_busy_and_connected_are_spared(tmp_path: Path) -> None:
    # interval: checks are run by hand here (cull_idle), the periodic task in the next test.
    mkm = AsyncMultiKernelManager(cull=CullPolicy(idle_timeout=IDLE, interval=3600))
    rec = Recorder()
    mkm.add_event_listener(rec)
    try:
        busy, connected, idle = [await mkm.start_kernel() for _ in range(3)]
        kc = mkm.client(busy)
        kc.start_channels()
        await kc.wait_for_ready(READY)
        gate = tmp_path / "gate"
        kc.execute(f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)")
        await until(lambda: mkm.kernel_model(busy)["execution_state"] == "busy")
        await kc.aclose()  # no connection left: only being busy spares it
        mkm.add_connection(connected)
        culled = await cull_until(mkm, idle)
        assert culled == [idle]

        # The spared ones are past the idle timeout too, and still spared.
        def idle_for(kid: str) -> float:
            stamp = mkm.kernel_model(kid)["last_activity"]
            when = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
            return time.time() - when.replace(tzinfo=dt.timezone.utc).timestamp()

        await until(lambda: min(idle_for(busy), idle_for(connected)) > IDLE)
        assert await mkm.cull_idle() == []
        assert busy in mkm and connected in mkm
        model = mkm.kernel_model(idle)
        assert model["execution_state"] == "dead" and model["id"] == idle
        assert model["reason"].startswith("culled: idle for ")
        assert idle not in mkm and mkm.metrics.culls.value(kernel_name="python3") == 1
        ev = await rec.wait(lambda evs: [e for e in evs if e.kind == "culled"])
        assert ev[0].kernel_id == idle and ev[0].detail["reason"] == model["reason"]
        # Per policy: busy and connected kernels may be culled too.
        mkm.cull_policy = CullPolicy(
            idle_timeout=IDLE, interval=3600, cull_busy=True, cull_connected=True
        )
        assert sorted(await mkm.cull_idle()) == sorted([busy, connected])
        assert mkm.kernel_model(busy)["reason"].startswith("culled: busy for ")
        assert len(mkm) == 0
        assert mkm.remove_kernel(idle) is None  # forgets the culled model
        with pytest.raises(NoSuchKernelId):
            mkm.kernel_model(idle)
    finally:
        gate.touch()
        await mkm.aclose()


async def test_the_culler_task_culls_by_itself_and_forgets_after_retention() -> None:
    policy = CullPolicy(
        idle_timeout=3600,
        interval=0.1,
        retention=0.5,
        overrides={"pyimport/kernel": CullPolicy(idle_timeout=IDLE)},
    )
    mkm = AsyncMultiKernelManager(cull=policy)
    try:
        kept = await mkm.start_kernel("python3")
        kid = await mkm.start_kernel("pyimport/kernel")  # its type's override culls it
        await until(lambda: kid not in mkm)
        assert mkm.kernel_model(kid)["execution_state"] == "dead"

        def forgotten() -> bool:
            try:
                mkm.kernel_model(kid)
            except NoSuchKernelId:
                return True
            return False

        await until(forgotten)
        assert kept in mkm
    finally:
        await mkm.aclose()

"""The multi-kernel manager: ids, model, activity, limits, concurrency, metrics, blocking face.

Real ipykernels throughout; the slow one is an unmodified ipykernel delayed at
interpreter startup by tests/kernels/slow_import (see tests/kernels/README.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from helpers import KERNELS_DIR, Recorder, wait_for
from kernelkeeper import (
    AsyncKernelManager,
    KernelError,
    KernelExecutableNotFound,
    KernelManager,
    LifecycleError,
    PoolConfig,
)
from kernelkeeper.blocking_multi import MultiKernelManager
from kernelkeeper.multikernel import (
    AsyncMultiKernelManager,
    DuplicateKernelError,
    KernelLimitError,
    NoSuchKernelId,
)

READY = 60.0
IPYKERNEL = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
async def mkm() -> AsyncIterator[AsyncMultiKernelManager]:
    m = AsyncMultiKernelManager()
    yield m
    await m.aclose()


@pytest.fixture
def slow_kernel(kernel_dir: Callable[..., str]) -> Callable[[float], str]:
    def make(delay: float) -> str:
        env = {"PYTHONPATH": str(KERNELS_DIR / "slow_import"), "KK_TEST_START_DELAY": str(delay)}
        return kernel_dir("slow_start", name="slow-ipykernel", argv=IPYKERNEL, env=env)

    return make


def kernel_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "kernel-" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


async def until(pred: Callable[[], Any], timeout: float = READY) -> Any:
    return await asyncio.to_thread(wait_for, pred, timeout)


# -- ids and model ------------------------------------------------------------------


async def test_lifecycle_ids_and_model(mkm: AsyncMultiKernelManager) -> None:
    kid = await mkm.start_kernel(kernel_id="my-kernel")
    assert kid == "my-kernel"
    assert kid in mkm and mkm.list_kernel_ids() == [kid] and len(mkm) == 1
    assert isinstance(mkm.get_kernel(kid), AsyncKernelManager)
    assert await mkm.is_alive(kid)
    model = mkm.kernel_model(kid)
    assert set(model) == {"id", "name", "last_activity", "execution_state", "connections"}
    assert model["id"] == kid and model["name"] == "python3"
    assert model["execution_state"] == "idle" and model["connections"] == 0
    assert ISO.match(model["last_activity"]), model["last_activity"]
    when = dt.datetime.strptime(model["last_activity"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs(when.replace(tzinfo=dt.timezone.utc).timestamp() - time.time()) < 120
    info = mkm.get_connection_info(kid)
    assert info["transport"] == "tcp" and info["shell_port"] > 0
    with pytest.raises(DuplicateKernelError):
        await mkm.start_kernel(kernel_id=kid)
    await mkm.interrupt_kernel(kid)
    await mkm.restart_kernel(kid, now=True)
    assert await mkm.is_alive(kid) and mkm.kernel_model(kid)["execution_state"] == "idle"
    await mkm.shutdown_kernel(kid)
    assert kid not in mkm and len(mkm) == 0


async def test_unknown_ids_raise_a_key_error_naming_them(mkm: AsyncMultiKernelManager) -> None:
    for call in (
        lambda: mkm.get_kernel("nope"),
        lambda: mkm.kernel_model("nope"),
        lambda: mkm.get_connection_info("nope"),
        lambda: mkm.add_connection("nope"),
    ):
        with pytest.raises(NoSuchKernelId) as ei:
            call()
        assert isinstance(ei.value, KeyError) and isinstance(ei.value, KernelError)
        assert "nope" in str(ei.value) and ei.value.kernel_id == "nope"
    for coro in (mkm.shutdown_kernel("nope"), mkm.restart_kernel("nope"), mkm.is_alive("nope")):
        with pytest.raises(NoSuchKernelId):
            await coro
    assert mkm.remove_kernel("nope") is None


# -- activity -----------------------------------------------------------------------


async def test_activity_follows_executions_and_restarts(mkm: AsyncMultiKernelManager) -> None:
    kid = await mkm.start_kernel()
    first = mkm.kernel_model(kid)["last_activity"]
    kc = mkm.client(kid)
    assert mkm.kernel_model(kid)["connections"] == 0  # channels not running yet
    kc.start_channels()
    try:
        await kc.wait_for_ready(READY)
        assert mkm.kernel_model(kid)["connections"] == 1
        for _ in range(2):  # before and after a restart (same ports: the SUB socket reconnects)
            # The kernel stays busy until the file exists: no race with a short cell.
            # (The busy/idle of wait_for_ready's kernel_info probe is not activity.)
            gate = Path(mkm.get_kernel(kid).connection_file).with_suffix(".gate")
            code = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)"
            kc.execute(code)
            await until(lambda: mkm.kernel_model(kid)["execution_state"] == "busy")
            gate.touch()
            await until(lambda: mkm.kernel_model(kid)["execution_state"] == "idle")
            gate.unlink()
            assert mkm.kernel_model(kid)["last_activity"] > first
            await mkm.restart_kernel(kid)
            assert mkm.kernel_model(kid)["execution_state"] == "idle"
            await kc.wait_for_ready(READY)
    finally:
        await kc.aclose()
    assert mkm.kernel_model(kid)["connections"] == 0
    mkm.add_connection(kid)
    mkm.add_connection(kid)
    mkm.remove_connection(kid)
    assert mkm.kernel_model(kid)["connections"] == 1
    mkm.remove_connection(kid)
    mkm.remove_connection(kid)  # never below zero
    assert mkm.kernel_model(kid)["connections"] == 0


# -- limits ---------------------------------------------------------------------------


async def test_limits() -> None:
    mkm = AsyncMultiKernelManager(max_kernels=2, max_kernels_per_type={"python3": 1})
    try:
        await mkm.start_kernel("python3")
        with pytest.raises(KernelLimitError) as ei:
            await mkm.start_kernel("python3")
        assert isinstance(ei.value, RuntimeError) and "python3" in str(ei.value)
        await mkm.start_kernel("pyimport/kernel")  # another type: allowed
        with pytest.raises(KernelLimitError, match="max_kernels=2"):
            await mkm.start_kernel("pyimport/kernel")
        assert len(mkm) == 2
    finally:
        await mkm.aclose()


# -- concurrency ----------------------------------------------------------------------


async def test_a_slow_start_blocks_no_other_start_or_shutdown(
    mkm: AsyncMultiKernelManager, slow_kernel: Callable[[float], str]
) -> None:
    slow = asyncio.create_task(mkm.start_kernel(slow_kernel(300), kernel_id="slow"))
    await until(lambda: len(kernel_processes()) == 1)
    assert mkm.kernel_model("slow")["execution_state"] == "starting"
    assert "slow" not in mkm  # listed once started, as in jupyter_client
    fast = await mkm.start_kernel()  # the slow one sleeps 300 s: this must not wait for it
    await mkm.shutdown_kernel(fast)
    assert not slow.done()
    await mkm.shutdown_kernel("slow")  # ends the start at once
    assert await slow == "slow"
    assert "slow" not in mkm
    with pytest.raises(NoSuchKernelId):
        mkm.kernel_model("slow")


async def test_shutdown_all_while_eight_kernels_start(
    mkm: AsyncMultiKernelManager, slow_kernel: Callable[[float], str]
) -> None:
    name = slow_kernel(300)
    starts = [asyncio.create_task(mkm.start_kernel(name)) for _ in range(8)]
    await until(lambda: len(kernel_processes()) == 8)
    t0 = time.monotonic()
    await mkm.shutdown_all()
    assert time.monotonic() - t0 < 60  # ended, not waited for (they would take 300 s)
    ids = await asyncio.gather(*starts)
    assert len(set(ids)) == 8 and len(mkm) == 0
    # conftest's leak check: no kernel process and no kernel-* file left behind


# -- metrics and events -----------------------------------------------------------------


async def test_metrics_and_events(mkm: AsyncMultiKernelManager) -> None:
    rec = Recorder()
    mkm.add_event_listener(rec)
    a = await mkm.start_kernel()
    b = await mkm.start_kernel()
    await mkm.restart_kernel(a)
    m = mkm.metrics
    assert m.starts.value(kernel_name="python3") == 2
    assert m.start_latency.count(kernel_name="python3") == 2
    assert m.start_latency.sum(kernel_name="python3") > 0
    await until(lambda: m.restarts.value(reason="requested") == 1)
    await mkm.signal_kernel(b, signal.SIGKILL)
    await until(lambda: m.deaths.total() == 1)
    await until(lambda: mkm.kernel_model(b)["execution_state"] == "dead")
    text = m.render()
    assert 'kernelkeeper_kernel_starts_total{kernel_name="python3"} 2' in text
    assert 'kernelkeeper_kernel_restarts_total{reason="requested"} 1' in text
    assert 'kernelkeeper_kernel_deaths_total{kernel_name="python3"} 1' in text
    assert 'kernelkeeper_kernel_start_seconds_count{kernel_name="python3"} 2' in text
    assert 'kernelkeeper_kernels{state="dead"} 1' in text
    assert 'kernelkeeper_kernels{state="idle"} 1' in text
    assert "# TYPE kernelkeeper_kernel_start_seconds histogram" in text
    await rec.wait(lambda ev: {"started", "restarted", "died"} <= {e.kind for e in ev})
    assert {e.kernel_id for e in rec.events} == {a, b}


# -- warm pools (the contract with kernelkeeper.pool) ------------------------------------


class ContractPool:
    """The KernelPool contract, for the integration test until kernelkeeper.pool exists:
    ``take`` hands out one kernel started beforehand, renamed to the requested id."""

    def __init__(self) -> None:
        self.hits = self.misses = 0
        self.kernels: list[AsyncKernelManager] = []

    @property
    def size(self) -> int:
        return len(self.kernels)

    async def start(self) -> None:
        km = AsyncKernelManager("python3")
        await km.start_kernel()
        await km.wait_ready(READY)
        self.kernels.append(km)

    async def take(
        self, kernel_id: str | None = None, cwd: str | None = None, env: Any = None
    ) -> AsyncKernelManager | None:
        if not self.kernels or cwd is not None:
            self.misses += 1
            return None
        self.hits += 1
        km = self.kernels.pop()
        if kernel_id is not None:
            km.kernel_id = kernel_id
        return km

    async def aclose(self) -> None:
        for km in self.kernels:
            await km.shutdown_kernel(now=True)
        self.kernels.clear()


async def test_pool_hits_are_adopted_and_misses_start_fresh(tmp_path: Path) -> None:
    pool = ContractPool()
    mkm = AsyncMultiKernelManager(pools={"python3": pool})
    rec = Recorder()
    mkm.add_event_listener(rec)
    try:
        await mkm.start()
        assert pool.size == 1
        pooled = pool.kernels[0]
        kid = await mkm.start_kernel("python3", kernel_id="from-pool")
        assert mkm.get_kernel(kid) is pooled and pooled.kernel_id == "from-pool"
        assert mkm.kernel_model(kid)["execution_state"] == "idle"
        fresh = await mkm.start_kernel("python3", cwd=str(tmp_path))  # incompatible: a miss
        assert mkm.get_kernel(fresh) is not pooled
        text = mkm.metrics.render()
        assert 'kernelkeeper_pool_hits_total{kernel_name="python3"} 1' in text
        assert 'kernelkeeper_pool_misses_total{kernel_name="python3"} 1' in text
        await rec.wait(lambda ev: sum(e.kind == "started" for e in ev) >= 2)
        assert any(e.kernel_id == kid and e.detail.get("pool") for e in rec.events)
        await pool.start()  # a pooled kernel again: shutdown_all ends it with the rest
        assert pool.size == 1
    finally:
        await mkm.aclose()
    assert pool.size == 0


async def test_real_pool_hit_is_ready_honours_cwd_and_refills(tmp_path: Path) -> None:
    mkm = AsyncMultiKernelManager(pools={"python3": PoolConfig(min_size=1)})
    try:
        await mkm.start()
        pool = mkm._pools["python3"]
        await pool.wait_filled(timeout=60)
        pooled_pid = pool.pids()[0]
        kid = await mkm.start_kernel("python3", kernel_id="warm-one", cwd=str(tmp_path))
        km = mkm.get_kernel(kid)
        assert km.process is not None and km.process.pid == pooled_pid  # a hit
        assert os.path.basename(km.connection_file) == "kernel-warm-one.json"
        kc = mkm.client(kid)
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=30)
            result = await kc.run_cell("import os; print(os.getcwd())", timeout=30)
            assert result.stdout.strip() == str(tmp_path)
        finally:
            await kc.aclose()
        assert pool.hits == 1
        await pool.wait_filled(timeout=60)  # refilled after the take
        assert pool.size == 1 and pooled_pid not in pool.pids()
    finally:
        await mkm.aclose()


async def test_pool_hit_without_an_id_keeps_the_kernels_and_hands_out_its_client() -> None:
    mkm = AsyncMultiKernelManager(pools={"python3": PoolConfig(min_size=1)})
    try:
        await mkm.start()
        pool = mkm._pools["python3"]
        await pool.wait_filled(timeout=60)
        pooled = pool._ready[0].km
        cf = pooled.connection_file
        kid = await mkm.start_kernel("python3")
        km = mkm.get_kernel(kid)
        # No id asked for: the pooled kernel's own uuid4 and file, not a rename.
        assert km is pooled and kid == km.kernel_id and km.connection_file == cf
        assert str(uuid.UUID(kid)) == kid
        # The connected client is not a connection until handed out.
        assert mkm.kernel_model(kid)["connections"] == 0
        kc = mkm.client(kid)
        assert kc.channels_running and mkm.kernel_model(kid)["connections"] == 1
        assert await kc.iopub_channel.get_msgs() == []  # nothing from its time in the pool
        other = mkm.client(kid)  # handed out once; then fresh clients
        assert other is not kc and not other.channels_running
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=30)
            result = await kc.run_cell("print(6 * 7)", timeout=30)
            assert result.stdout == "42\n"
            # Its first execution's output came in order, nothing from the pool before it.
            assert result.execution_count == 1
        finally:
            await kc.aclose()
    finally:
        await mkm.aclose()


# -- the blocking face --------------------------------------------------------------------


def test_blocking_manager_from_a_plain_thread() -> None:
    result: dict[str, Any] = {}

    def work() -> None:
        mkm = MultiKernelManager()
        try:
            kid = mkm.start_kernel()
            result["contains"] = kid in mkm
            result["km"] = mkm.get_kernel(kid)
            result["alive"] = mkm.is_alive(kid)
            kc = mkm.client(kid)
            kc.start_channels()
            kc.wait_for_ready(READY)
            result["connections"] = mkm.kernel_model(kid)["connections"]
            result["stdout"] = kc.run_cell("print(6 * 7)", timeout=READY).stdout
            kc.stop_channels()
            mkm.restart_kernel(kid)
            result["state"] = mkm.kernel_model(kid)["execution_state"]
            sock = mkm.connect_shell(kid)
            sock.close()
            mkm.shutdown_all()
            result["after"] = len(mkm)
        except BaseException as e:
            result["error"] = e
        finally:
            mkm.close()
            mkm.context.destroy(linger=0)

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=300)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    assert result["contains"] and result["alive"] and isinstance(result["km"], KernelManager)
    assert result["connections"] == 1 and result["stdout"] == "42\n"
    assert result["state"] == "idle" and result["after"] == 0


# -- pending kernels (jupyter_client's use_pending_kernels) ---------------------------------


async def test_pending_kernels_are_listed_at_once_and_ready_follows_each_operation() -> None:
    mkm = AsyncMultiKernelManager(use_pending_kernels=True)
    try:
        kid = await mkm.start_kernel()
        km = mkm.get_kernel(kid)
        ready = km.ready  # type: ignore[attr-defined]
        assert ready is mkm.kernel_ready(kid) and not ready.done()
        assert kid in mkm and mkm.list_kernel_ids() == [kid] and len(mkm) == 1
        with pytest.raises(LifecycleError, match="pending"):
            await mkm.interrupt_kernel(kid)
        with pytest.raises(LifecycleError, match="pending"):
            await mkm.restart_kernel(kid)
        await asyncio.wait_for(ready, READY)
        assert await mkm.is_alive(kid)
        assert mkm.kernel_model(kid)["execution_state"] == "idle"
        await mkm.restart_kernel(kid, now=True)
        assert km.ready is not ready and km.ready.done()  # type: ignore[attr-defined]
        await mkm.interrupt_kernel(kid)
        await mkm.shutdown_kernel(kid, now=True)  # returns at once; listed until it is over
        stopped = km.ready  # type: ignore[attr-defined]
        await asyncio.wait_for(stopped, READY)
        assert kid not in mkm and not kernel_processes()
    finally:
        await mkm.aclose()


async def test_shutting_down_a_pending_start_ends_it_at_once(
    slow_kernel: Callable[[float], str],
) -> None:
    mkm = AsyncMultiKernelManager(use_pending_kernels=True)
    try:
        kid = await mkm.start_kernel(slow_kernel(300))
        start = mkm.kernel_ready(kid)
        await until(lambda: len(kernel_processes()) == 1)
        t0 = time.monotonic()
        await mkm.shutdown_kernel(kid)
        await asyncio.wait_for(mkm.kernel_ready(kid), READY)  # the shutdown's
        assert time.monotonic() - t0 < READY  # ended, not waited for (300 s)
        assert kid not in mkm and not kernel_processes()
        with pytest.raises(LifecycleError):
            await start  # the start itself was abandoned
    finally:
        await mkm.aclose()


async def test_shutdown_all_waits_for_pending_kernels(
    slow_kernel: Callable[[float], str],
) -> None:
    mkm = AsyncMultiKernelManager(use_pending_kernels=True)
    ids = [await mkm.start_kernel(slow_kernel(300)), await mkm.start_kernel()]
    await asyncio.wait_for(mkm.kernel_ready(ids[1]), READY)
    await mkm.shutdown_all()
    assert len(mkm) == 0 and not kernel_processes()


def _missing_executable_spec(kernel_dir: Callable[..., str], tmp_path: Path) -> str:
    return kernel_dir("missing", name="missing", argv=[str(tmp_path / "no-such-python"), "-f"])


async def test_a_missing_executable_is_a_file_not_found_error(
    mkm: AsyncMultiKernelManager, kernel_dir: Callable[..., str], tmp_path: Path
) -> None:
    name = _missing_executable_spec(kernel_dir, tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        await mkm.start_kernel(name)
    e = info.value
    assert isinstance(e, KernelExecutableNotFound) and isinstance(e, ValueError)
    assert e.path is not None and e.path.endswith("kernel.json")
    assert e.executable.endswith("no-such-python") and "does not exist" in str(e)
    assert len(mkm) == 0


async def test_a_pending_kernel_that_fails_to_start_stays_listed_until_shut_down(
    kernel_dir: Callable[..., str], tmp_path: Path
) -> None:
    name = _missing_executable_spec(kernel_dir, tmp_path)
    mkm = AsyncMultiKernelManager(use_pending_kernels=True)
    try:
        kid = await mkm.start_kernel(name)
        with pytest.raises(KernelExecutableNotFound):
            await asyncio.wait_for(mkm.kernel_ready(kid), READY)
        assert kid in mkm.list_kernel_ids()  # as jupyter_client: the caller sees the error
        await mkm.shutdown_kernel(kid)
        assert kid not in mkm
    finally:
        await mkm.aclose()


# -- jupyter_client's socket and session conventions ------------------------------------------


def test_blocking_faces_wrap_the_async_managers_and_streams_deliver_iopub() -> None:
    mkm = MultiKernelManager()
    try:
        kid = mkm.start_kernel()
        face = mkm.get_kernel(kid)
        assert isinstance(face, KernelManager) and face is mkm.get_kernel(kid)
        assert face.async_manager is mkm.async_manager.get_kernel(kid)
        assert face.ready.done() and face.ready.result() is None  # type: ignore[attr-defined]
        bare = KernelManager.from_async(face.async_manager)
        assert bare.async_manager is face.async_manager and bare.is_alive()
        session = face.session  # type: ignore[attr-defined]
        stream = mkm.connect_iopub(kid)
        seen: list[str] = []
        got = threading.Event()

        def on_iopub(frames: list[bytes]) -> None:  # on the library's loop
            _, rest = session.feed_identities(frames)
            msg = session.deserialize(rest, content=False)
            assert isinstance(msg["content"], bytes)  # left raw, as asked
            seen.append(msg["header"]["msg_type"])
            got.set()

        stream.on_recv(on_iopub)
        kc = mkm.client(kid)
        kc.start_channels()
        deadline = time.monotonic() + READY
        while not got.is_set() and time.monotonic() < deadline:
            kc.kernel_info(reply=True, timeout=READY)  # each one makes iopub status messages
            got.wait(0.1)
        kc.stop_channels()
        stream.close()
        assert "status" in seen
    finally:
        mkm.close()
        mkm.context.destroy(linger=0)

"""Kernels as Slurm jobs, on a real cluster on this machine: node `vm` and node
`node2` in a network namespace (reachable at 10.77.0.2 only).

Start the cluster with ``.ci/setup-slurm.sh`` (as root; it installs
slurm-wlm and munge when missing). Without it these tests skip, except
under ``CI=true``, where a missing cluster fails them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import kernelkeeper
from kernelkeeper import AsyncKernelClient, KernelDiedError, KernelTimeoutError
from kernelkeeper.errors import KernelStartError
from kernelkeeper.provider_slurm import SlurmJobManager, SlurmProvider
from kernelkeeper.remote_config import CONFIG_NAME
from remote_helpers import interrupt_a_sleep, wire_remote_providers

DEFAULT_CONF = "/tmp/kk-slurm/slurm.conf"
HOW = "start the test cluster with `sudo .ci/setup-slurm.sh` (see tests/test_slurm.py)"


def _cluster_env() -> dict[str, str] | None:
    conf = os.environ.get("SLURM_CONF") or DEFAULT_CONF
    if shutil.which("sbatch") is None or not os.path.exists(conf):
        return None
    env = {**os.environ, "SLURM_CONF": conf}
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-p", "debug", "-o", "%t"],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return env if out.strip().startswith(("idle", "mix", "alloc")) else None


_ENV = _cluster_env()


@pytest.fixture(autouse=True)
def cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The cluster's environment; a config dir of our own (nothing of the user's)."""
    if _ENV is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no Slurm cluster is up under CI: {HOW}")
        pytest.skip(f"no Slurm cluster: {HOW}")
    monkeypatch.setenv("SLURM_CONF", _ENV["SLURM_CONF"])
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", "")
    (tmp_path / "config").mkdir()
    yield _ENV


def write_config(tmp_path: Path, slurm: dict[str, Any]) -> None:
    (tmp_path / "config" / CONFIG_NAME).write_text(json.dumps({"slurm": slurm}))


async def run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode()


async def squeue(*args: str) -> list[str]:
    return (await run("squeue", "-h", *args)).split()


async def job_state(job_id: str) -> str:
    out = await run("scontrol", "-o", "show", "job", job_id)
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields.get("JobState", "")


async def wait_gone(job_name: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await squeue("-n", job_name, "-o", "%i"):
        assert loop.time() < deadline, f"job {job_name} still in squeue after {timeout} s"
        await asyncio.sleep(0.1)  # polling the scheduler: it pushes nothing


@pytest.fixture
def remote_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_remote_providers(monkeypatch)


@pytest.fixture
async def job_name() -> AsyncIterator[str]:
    """A job name of this test's own; no job of that name may be left afterwards."""
    name = f"kk-test-{uuid.uuid4().hex[:8]}"
    yield name
    left = await squeue("-n", name, "-o", "%i")
    if left:
        await run("scancel", *left)
    assert not left, f"Slurm jobs left by the test: {left}"


async def test_kernel_as_slurm_job_through_the_manager(
    remote_wiring: None, job_name: str, tmp_path: Path
) -> None:
    """Start, run code, interrupt, restart, shut down: the job ends with the kernel."""
    write_config(tmp_path, {"job_name": job_name, "time": "00:10:00"})
    km, kc = await kernelkeeper.async_start_new_kernel(
        kernel_name="slurm/python3", startup_timeout=60
    )
    try:
        proc = km.process
        assert isinstance(proc, SlurmJobManager)
        first_job = proc.job_id
        assert await squeue("-j", first_job, "-o", "%T") == ["RUNNING"]

        result = await kc.run_cell(
            "import os, socket; x = 42; print(socket.gethostname(), os.environ['SLURM_JOB_ID'])",
            timeout=30,
        )
        assert result.stdout.split() == [os.uname().nodename.split(".")[0], first_job]

        await interrupt_a_sleep(kc, km.interrupt_kernel)

        await kc.aclose()
        await km.restart_kernel()
        proc2 = km.process
        assert isinstance(proc2, SlurmJobManager)
        assert proc2.job_id != first_job
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        result = await kc.run_cell("print('x' in dir())", timeout=30)
        assert result.stdout.strip() == "False"
        # The first job ended with the restart.
        assert not await squeue("-j", first_job, "-o", "%T")
    finally:
        await kc.aclose()
        await km.shutdown_kernel()
    assert not await squeue("-n", job_name, "-o", "%i")


async def test_invalid_partition_fails_with_the_schedulers_reason(job_name: str) -> None:
    with pytest.raises(KernelStartError, match=r"(?i)invalid partition"):
        await SlurmProvider().launch(
            "python3",
            startup_timeout=30,
            remote_options={"job_name": job_name, "partition": "no-such-partition"},
        )


async def test_impossible_resources_fail_with_the_schedulers_reason(job_name: str) -> None:
    with pytest.raises(KernelStartError, match=r"(?i)node configuration is not available"):
        await SlurmProvider().launch(
            "python3",
            startup_timeout=30,
            remote_options={"job_name": job_name, "mem": "100000000G"},
        )


async def test_pending_past_the_timeout_is_cancelled_with_its_reason(job_name: str) -> None:
    started = time.monotonic()
    with pytest.raises(KernelTimeoutError, match=r"PENDING.*PartitionDown"):
        await SlurmProvider().launch(
            "python3",
            startup_timeout=3,
            remote_options={"job_name": job_name, "partition": "closed"},
        )
    assert time.monotonic() - started < 3 + 30
    assert not await squeue("-n", job_name, "-o", "%i")  # cancelled, not left pending


async def test_job_that_ends_before_registering(job_name: str) -> None:
    started = time.monotonic()
    with pytest.raises(KernelDiedError, match=r"ended before it registered: job .* FAILED"):
        await SlurmProvider().launch(
            "python3",
            startup_timeout=60,
            remote_options={"job_name": job_name, "python": "/nonexistent/python3"},
        )
    assert time.monotonic() - started < 30  # the end is noticed, not the timeout


async def test_scancel_from_outside_is_noticed_as_death(
    remote_wiring: None, job_name: str, tmp_path: Path
) -> None:
    # A long poll interval: the missed heartbeat must be what notices it.
    write_config(tmp_path, {"job_name": job_name, "poll_interval": 120})
    km, kc = await kernelkeeper.async_start_new_kernel(
        kernel_name="slurm/python3", startup_timeout=60
    )
    try:
        proc = km.process
        assert isinstance(proc, SlurmJobManager)
        pending = kc.execute("import time; time.sleep(120)", reply=True, timeout=100)
        await run("scancel", proc.job_id)
        started = time.monotonic()
        with pytest.raises(KernelDiedError) as info:
            await pending
        assert time.monotonic() - started < 15
        assert not await km.is_alive()
        # Seen while its processes end (COMPLETING: the scheduler may not have an
        # exit code yet, or one killed by SIGTERM) or after (CANCELLED).
        assert (
            "CANCELLED" in proc.end_reason
            or "COMPLETING" in proc.end_reason
            or proc.exit_code == -signal.SIGTERM
        ), proc.end_reason
        assert f"job {proc.job_id}" in info.value.stderr_tail
    finally:
        await kc.aclose()
        await km.shutdown_kernel()
    await wait_gone(job_name, 30)


def test_blocking_start_new_kernel(remote_wiring: None, job_name: str, tmp_path: Path) -> None:
    """``kernelkeeper.start_new_kernel(kernel_name="slurm/python3")``, the blocking face."""
    write_config(tmp_path, {"job_name": job_name})
    km, kc = kernelkeeper.start_new_kernel(kernel_name="slurm/python3", startup_timeout=60)
    try:
        result = kc.run_cell("import os; print(os.environ['SLURM_JOB_NAME'])", timeout=30)
        assert result.stdout.strip() == job_name
    finally:
        kc.stop_channels()
        km.shutdown_kernel()


async def test_multikernel_manager_runs_a_slurm_kernel(
    remote_wiring: None, job_name: str, tmp_path: Path
) -> None:
    write_config(tmp_path, {"job_name": job_name})
    async with kernelkeeper.AsyncMultiKernelManager() as mkm:
        kid = await mkm.start_kernel("slurm/python3", startup_timeout=60)
        kc = mkm.client(kid)
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            assert (await kc.run_cell("6 * 7", timeout=30)).result() == {"text/plain": "42"}
            assert len(await squeue("-n", job_name, "-o", "%i")) == 1
        finally:
            await kc.aclose()
        await mkm.shutdown_kernel(kid)
    assert not await squeue("-n", job_name, "-o", "%i")


async def test_gateway_runs_a_cell_in_a_slurm_kernel(
    remote_wiring: None, job_name: str, tmp_path: Path
) -> None:
    """``POST /api/kernels {"name": "slurm/python3"}``, then a cell over the WebSocket."""
    import aiohttp

    from gwhelpers import AUTH, WsKernel, config, running, start_kernel

    write_config(tmp_path, {"job_name": job_name})
    async for gw in running(config()):
        async with aiohttp.ClientSession(headers=AUTH) as http:
            kid = await start_kernel(http, gw, name="slurm/python3")
            assert len(await squeue("-n", job_name, "-o", "%i")) == 1
            ws = await WsKernel.connect(http, gw, kid)
            try:
                out, reply = await ws.execute("import os; print(os.environ['SLURM_JOB_NAME'])")
                assert reply["content"]["status"] == "ok"
                assert out.strip() == job_name
            finally:
                await ws.close()
            r = await http.delete(f"{gw.url}api/kernels/{kid}")
            assert r.status == 204, await r.text()
    await wait_gone(job_name, 30)


def _node2_state() -> str:
    return subprocess.run(
        ["sinfo", "-h", "-p", "remote", "-o", "%t"], capture_output=True, text=True, timeout=20
    ).stdout.strip()


def _has_namespace_node() -> bool:
    return _node2_state().startswith(("idle", "mix", "alloc"))


@pytest.fixture
def namespace_node(cluster: dict[str, str]) -> Iterator[str]:
    """The partition of node2, the node in network namespace kk-node2 (10.77.0.2)."""
    deadline = time.monotonic() + 90
    # After the link test, node2 is DOWN until slurmctld hears from it again.
    while _node2_state().startswith("down") and time.monotonic() < deadline:
        time.sleep(1)  # the scheduler's own pace; nothing to await
    if not _has_namespace_node():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no namespace node under CI: {HOW}")
        pytest.skip(f"no namespace node (partition 'remote'): {HOW}")
    yield "remote"


async def test_kernel_on_the_namespace_node(job_name: str, namespace_node: str) -> None:
    """node2 is reachable at its namespace's address only: the kernel binds
    there, registers over the veth pair and is used at that address, with
    CurveZMQ on every channel (its keys went with the key, on stdin), by a
    plain client with no lifecycle manager."""
    info, km = await SlurmProvider().launch(
        "python3",
        startup_timeout=60,
        transport_encryption="required",
        remote_options={"job_name": job_name, "partition": namespace_node},
    )
    try:
        assert info.ip == "10.77.0.2" and km.hostname == "node2"
        assert info.encrypted and info.key
        kc = AsyncKernelClient(info, manager=km)
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        result = await kc.run_cell("import socket; print(socket.gethostname())", timeout=30)
        assert result.stdout.strip() == "node2"
        await kc.aclose()
    finally:
        await km.cleanup()
    assert await job_state(km.job_id) in ("CANCELLED", "COMPLETED")
    assert not await squeue("-n", job_name, "-o", "%i")


async def test_a_node_that_disappears_is_reported_dead(job_name: str, namespace_node: str) -> None:
    """node2's link goes down: the scheduler still says RUNNING, the missed
    heartbeats say lost; the kernel is reported dead, its job cancelled, and
    the job leaves the queue once the scheduler counts the node as down."""
    info, km = await SlurmProvider().launch(
        "python3",
        startup_timeout=60,
        remote_options={
            "job_name": job_name,
            "partition": namespace_node,
            "node_lost_after": 5,
            "poll_interval": 120,
        },
    )
    kc = AsyncKernelClient(info, manager=km)
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=30)
        pending = kc.execute("import time; time.sleep(120)", reply=True, timeout=100)
        await run("ip", "link", "set", "kk-veth0", "down")
        started = time.monotonic()
        with pytest.raises(KernelDiedError):
            await pending
        assert time.monotonic() - started < 5 + 20
        assert "no heartbeat from node node2" in km.end_reason
        assert "cancelled" in km.end_reason
        await kc.aclose()
        await km.cleanup()
        # SlurmdTimeout=10 in the test cluster: the node is DOWN and the job gone.
        await wait_gone(job_name, 60)
    finally:
        # The node comes back by itself (ReturnToService=2) within about a minute;
        # the namespace_node fixture waits for it.
        await run("ip", "link", "set", "kk-veth0", "up")
        await kc.aclose()
        await km.cleanup()


def test_command_line_runs_code_in_a_slurm_kernel(
    remote_wiring: None, job_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kernelkeeper run -k slurm/python3 -c "..."`` (in-process: the routing is ours)."""
    from kernelkeeper import cli

    write_config(tmp_path, {"job_name": job_name})
    code = "import os, socket; print(socket.gethostname(), os.environ['SLURM_JOB_NAME'])"
    assert cli.main(["run", "-k", "slurm/python3", "-c", code]) == 0
    assert capsys.readouterr().out.split() == [os.uname().nodename.split(".")[0], job_name]

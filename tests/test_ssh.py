"""Kernels on an SSH host: a real sshd on localhost, key authentication.

Start it with ``.ci/setup-sshd.sh`` (as root; it installs openssh-server
when missing). Without it these tests skip, except under ``CI=true``, where
a missing sshd fails them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import kernelkeeper
from kernelkeeper import AsyncKernelClient, KernelDiedError
from kernelkeeper.provider_ssh import SshKernelManager, SshProvider
from kernelkeeper.remote_config import CONFIG_NAME
from remote_helpers import interrupt_a_sleep, wire_remote_providers

SSHD_DIR = Path(os.environ.get("KK_SSHD_DIR", "/tmp/kk-sshd"))
HOW = "start the test sshd with `sudo .ci/setup-sshd.sh` (see tests/test_ssh.py)"
HOST = "testhost"  # the config file's name for the sshd on localhost


def _sshd() -> dict[str, str] | None:
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        return None
    try:
        lines = (SSHD_DIR / "env").read_text().splitlines()
    except OSError:
        return None
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    pid_file = SSHD_DIR / "sshd.pid"
    try:
        alive = psutil.pid_exists(int(pid_file.read_text()))
    except (OSError, ValueError):
        alive = False
    return env if alive else None


_ENV = _sshd()


@pytest.fixture(autouse=True)
def sshd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The host's options, written as the config file's ``ssh.hosts.testhost``."""
    if _ENV is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no test sshd is up under CI: {HOW}")
        pytest.skip(f"no test sshd (or no asyncssh): {HOW}")
    options: dict[str, Any] = {
        "hostname": _ENV["KK_SSH_HOST"],
        "port": int(_ENV["KK_SSH_PORT"]),
        "user": _ENV["KK_SSH_USER"],
        "key": _ENV["KK_SSH_KEY"],
        "known_hosts": _ENV["KK_SSH_KNOWN_HOSTS"],
    }
    config = tmp_path / "config"
    config.mkdir()
    (config / CONFIG_NAME).write_text(json.dumps({"ssh": {"hosts": {HOST: options}}}))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", "")
    yield options


def group_members(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except OSError:
            continue
    return out


async def wait_group_gone(pgid: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while members := group_members(pgid):
        assert loop.time() < deadline, f"process group {pgid} still has {members}"
        await asyncio.sleep(0.05)  # another host's processes: nothing to await


async def test_ssh_kernel_through_the_manager(
    monkeypatch: pytest.MonkeyPatch, sshd: dict[str, Any]
) -> None:
    """Start, run code, interrupt, restart, shut down; the remote group ends with it."""
    wire_remote_providers(monkeypatch)
    km, kc = await kernelkeeper.async_start_new_kernel(
        kernel_name=f"ssh/{HOST}/python3", startup_timeout=60
    )
    try:
        proc = km.process
        assert isinstance(proc, SshKernelManager)
        # Bound on the host's own address (in CI: the namespace's, not loopback).
        assert km.connection_info is not None
        assert km.connection_info.ip == sshd["hostname"]
        result = await kc.run_cell(
            "import os; x = 1; print(os.getpid(), os.getpgid(0))", timeout=30
        )
        assert result.stdout.split() == [str(proc.pid), str(proc.pgid)]
        first_group = proc.pgid

        await interrupt_a_sleep(kc, km.interrupt_kernel)

        await kc.aclose()
        await km.restart_kernel()
        await wait_group_gone(first_group, 15)
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        result = await kc.run_cell("print('x' in dir())", timeout=30)
        assert result.stdout.strip() == "False"
        proc = km.process
        assert isinstance(proc, SshKernelManager)
    finally:
        await kc.aclose()
        await km.shutdown_kernel()
    await wait_group_gone(proc.pgid, 15)


async def test_connection_drop_ends_the_kernel_on_both_sides() -> None:
    """The SSH connection dies: the manager reports the death, the host kills the group."""
    info, km = await SshProvider().launch(f"{HOST}/python3", startup_timeout=60)
    try:
        kc = AsyncKernelClient(info, manager=km)
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        pending = kc.execute("import time; time.sleep(120)", reply=True, timeout=100)
        # The sshd process serving our connection (the kernel's parent) dies.
        server = psutil.Process(km.pid).parent()
        assert server is not None and server.name().startswith("sshd")
        server.send_signal(signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(KernelDiedError):
            await pending
        assert time.monotonic() - started < 20
        assert not await km.is_alive()
        assert "lost" in km.end_reason or "killed" in km.end_reason
        await wait_group_gone(km.pgid, 15)
        await kc.aclose()
    finally:
        await km.cleanup()


async def test_tunnel_reaches_the_kernel_through_the_connection() -> None:
    """Registration and the five ports through the SSH connection, CurveZMQ inside."""
    info, km = await SshProvider().launch(
        f"{HOST}/python3",
        startup_timeout=60,
        transport_encryption="required",
        remote_options={"tunnel": True},
    )
    try:
        assert info.ip == "127.0.0.1" and info.encrypted
        kc = AsyncKernelClient(info, manager=km)
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        result = await kc.run_cell("import os; print(os.getpid())", timeout=30)
        assert result.stdout.strip() == str(km.pid)
        await kc.aclose()
    finally:
        await km.cleanup()
    await wait_group_gone(km.pgid, 15)


async def test_failed_start_reports_the_hosts_stderr() -> None:
    started = time.monotonic()
    with pytest.raises(KernelDiedError, match="no interpreter") as info:
        await SshProvider().launch(
            f"{HOST}/python3",
            startup_timeout=60,
            remote_options={"python": "/nonexistent/python3"},
        )
    assert "exit status 127" in str(info.value)
    assert time.monotonic() - started < 30

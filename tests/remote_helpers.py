"""Helpers shared by the remote-kernel tests (tests/test_slurm.py, tests/test_ssh.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from helpers import sleep_cell
from kernelkeeper import AsyncKernelClient
from kernelkeeper import finder as _finder
from kernelkeeper.provider_slurm import SlurmProvider
from kernelkeeper.provider_ssh import SshProvider


def wire_remote_providers(monkeypatch: pytest.MonkeyPatch) -> _finder.KernelFinder:
    """The default finder, checked to route ``slurm/...`` and ``ssh/...`` kernel
    types to their providers (registered as entry points in pyproject.toml; the
    lifecycle launches through a provider that launches by itself)."""
    found = _finder.default_finder()
    assert isinstance(found.resolve("slurm/python3")[0], SlurmProvider)
    assert isinstance(found.resolve("ssh/somehost/python3")[0], SshProvider)
    return found


async def interrupt_a_sleep(kc: AsyncKernelClient, interrupt: Any) -> None:
    """Run a long ``time.sleep``; once it runs, ``interrupt()`` must end it."""
    msg_id = kc.execute(sleep_cell(60, "go"))
    while True:  # the cell's output says it runs: now interrupt it
        m = await kc.get_iopub_msg(timeout=30)
        if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "stream":
            break
    started = time.monotonic()
    await interrupt()
    while True:
        reply = await kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - started < 20  # far below the sleep's 60 s

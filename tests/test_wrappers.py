"""Kernelspecs that start ipykernel through a wrapper start as they do with jupyter_client.

``sh -c 'exec "$@"'``, ``env -i`` (clears our environment variables), ``sudo``
(closes inherited fds and resets the environment), a script that closes every
fd above 2, and a ``conda run``-style wrapper that runs the kernel as a child:
the handshake cannot work through all of them, so these kernels get
pre-assigned ports and the guard holds the watch pipe. Each one must start,
answer, be interruptible, shut down leaving nothing, and die with a SIGKILLed
manager.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from helpers import kernel_script, sleep_cell, wait_gone
from kernelkeeper import AsyncKernelManager
from kernelkeeper.launch import _binds_port_zero

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, /proc"),
    pytest.mark.timeout(180),
]

READY = 60.0
REPLY = 30.0
KERNEL = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def wrapped(wrapper: str) -> list[str]:
    """The kernelspec argv of ``wrapper`` in front of a plain ipykernel."""
    if wrapper == "sh":
        return ["sh", "-c", 'exec "$@"', "sh", *KERNEL]
    if wrapper == "env":
        keep = [f"{k}={os.environ[k]}" for k in ("PATH", "IPYTHONDIR") if k in os.environ]
        return ["env", "-i", *keep, *KERNEL]
    if wrapper == "sudo":
        return ["sudo", "-n", "-u", getpass.getuser(), "--preserve-env=IPYTHONDIR", "--", *KERNEL]
    if wrapper in ("close_fds", "run_as_child"):
        return [sys.executable, kernel_script(wrapper), *KERNEL]
    raise ValueError(wrapper)


def sudo_skip_reason() -> str | None:
    if shutil.which("sudo") is None:
        return "sudo is not installed (apt-get install -y sudo to run this case)"
    probe = subprocess.run(
        ["sudo", "-n", "-u", getpass.getuser(), "--preserve-env=IPYTHONDIR", "--", "true"],
        capture_output=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"sudo cannot run a command as this user without a password: {probe.stderr!r}"
    return None


WRAPPERS = ["sh", "env", "sudo", "close_fds", "run_as_child"]


def skip_unusable(wrapper: str) -> None:
    if wrapper == "sudo" and (reason := sudo_skip_reason()) is not None:
        pytest.skip(reason)


def runtime_files(runtime: Path) -> list[str]:
    return sorted(p.name for p in runtime.rglob("kernel-*"))


async def shell_reply(kc: Any, msg_id: str, timeout: float = REPLY) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no reply to {msg_id} within {timeout} s")
        msg = await kc.get_shell_msg(timeout=left)
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg  # type: ignore[no-any-return]


async def wait_output(kc: Any, msg_id: str, text: str, timeout: float = REPLY) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{text!r} not printed within {timeout} s (got {seen!r})")
        msg = await kc.get_iopub_msg(timeout=left)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            seen += msg["content"]["text"]


def test_which_argv_takes_the_handshake() -> None:
    assert _binds_port_zero(KERNEL)
    assert _binds_port_zero(["python3", "-Xfrozen_modules=off", "-m", "ipykernel_launcher"])
    assert _binds_port_zero(["/opt/env/bin/python3.12", "-W", "ignore", "-m", "ipykernel"])
    for wrapper in WRAPPERS:
        assert not _binds_port_zero(wrapped(wrapper)), wrapper
    assert not _binds_port_zero([sys.executable, kernel_script("slow_start"), "-f", "x"])
    assert not _binds_port_zero(["R", "--slave", "-e", "IRkernel::main()", "--args", "x"])


@pytest.mark.parametrize("wrapper", WRAPPERS)
async def test_wrapped_ipykernel(
    wrapper: str, kernel_dir: Callable[..., str], isolated_runtime: Path
) -> None:
    skip_unusable(wrapper)
    name = kernel_dir("slow_start", name=f"wrapped-{wrapper}", argv=wrapped(wrapper))
    km = AsyncKernelManager(name)
    kc = None
    try:
        await km.start_kernel(startup_timeout=READY)
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=READY)
        res = await kc.run_cell("import os; print(os.getpid())", timeout=REPLY)
        assert res.status == "ok", res.error
        kernel = psutil.Process(int(res.stdout))
        # The kernel is in the process group the manager signals (the wrapper's).
        assert os.getpgid(kernel.pid) == km.process.pid

        # Interrupt: SIGINT to the group reaches the kernel, and it survives it
        # (run_as_child and sudo also forward theirs: the kernel gets two).
        msg_id = await kc.execute(sleep_cell(60), stop_on_error=False)
        await wait_output(kc, msg_id, "sleeping")
        t0 = time.monotonic()
        await km.interrupt_kernel()
        reply = await shell_reply(kc, msg_id)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - t0 < 20
        res = await kc.run_cell("print('still here')", timeout=REPLY)
        assert res.stdout == "still here\n"
        await kc.aclose()
        kc = None
        await km.shutdown_kernel()
        wait_gone([kernel], timeout=10)
        assert not km.has_kernel
        assert runtime_files(isolated_runtime) == []
    finally:
        if kc is not None:
            await kc.aclose()
        await km.shutdown_kernel(now=True)


MANAGER = textwrap.dedent(
    """
    import json, os, sys
    import kernelkeeper

    out = {}
    for name in sys.argv[1:]:
        km, kc = kernelkeeper.start_new_kernel(startup_timeout=60, kernel_name=name)
        res = kc.run_cell("import os; print(os.getpid())", timeout=30)
        out[name] = {"kernel": int(res.stdout), "top": km.process.pid,
                     "files": [km.connection_file]}
    print(json.dumps(out), flush=True)
    sys.stdin.read()
    """
)


def test_sigkilled_manager_takes_wrapped_kernels(
    kernel_dir: Callable[..., str], tmp_path: Path, isolated_runtime: Path
) -> None:
    wrappers = [w for w in WRAPPERS if w != "sudo" or sudo_skip_reason() is None]
    names = [kernel_dir("slow_start", name=f"wrapped-{w}", argv=wrapped(w)) for w in wrappers]
    script = tmp_path / "manager.py"
    script.write_text(MANAGER)
    manager = subprocess.Popen(
        [sys.executable, str(script), *names],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=os.environ.copy(),
    )
    procs: list[psutil.Process] = []
    try:
        assert manager.stdout is not None
        line = manager.stdout.readline()
        assert line, f"manager script died (exit code {manager.wait(timeout=30)})"
        info: dict[str, Any] = json.loads(line)
        for entry in info.values():
            for pid in {entry["kernel"], entry["top"]}:
                procs.append(psutil.Process(pid))
        files = [f for entry in info.values() for f in entry["files"]]
        assert all(os.path.exists(f) for f in files)
    finally:
        manager.kill()
        manager.wait(timeout=30)
        for stream in (manager.stdin, manager.stdout):
            if stream is not None:
                stream.close()
    assert manager.returncode == -signal.SIGKILL
    wait_gone(procs, timeout=15, reap=True)
    deadline = time.monotonic() + 10
    while runtime_files(isolated_runtime) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runtime_files(isolated_runtime) == []

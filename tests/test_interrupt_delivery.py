"""SIGINT reaches the kernel's main thread, where user code runs.

An interrupt is a process-directed signal; Linux may hand it to any thread
that does not block it. If one of ipykernel's own threads took it, a main
thread blocked in ``time.sleep()`` would not be woken and the interrupt
would wait for the call to return. The launcher therefore starts every
thread with SIGINT blocked and unblocks it in the main thread only.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

import kernelkeeper as kk
from helpers import sleep_cell, wait_until_sleeping

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    pytest.mark.timeout(120),
]

READY = 60.0


def _blocked(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


def test_only_the_main_thread_takes_sigint() -> None:
    km, kc = kk.start_new_kernel(startup_timeout=READY)
    try:
        assert km.process is not None
        pid = km.process.pid
        tasks = sorted(int(p.name) for p in Path(f"/proc/{pid}/task").iterdir())
        assert len(tasks) > 3  # ipykernel's heartbeat, iopub, control, ... threads
        bit = 1 << (signal.SIGINT - 1)
        masks = {t: _blocked(Path(f"/proc/{pid}/task/{t}/status").read_text()) for t in tasks}
        assert not masks.pop(pid) & bit, "the main thread must take SIGINT"
        assert all(m & bit for m in masks.values()), f"threads not blocking SIGINT: {masks}"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_interrupting_a_long_sleep_is_prompt() -> None:
    km, kc = kk.start_new_kernel(startup_timeout=READY)
    try:
        for _ in range(5):
            # stop_on_error=False: after an error ipykernel aborts the requests
            # that reach it before it clears its abort flag, which it does only
            # after sending the reply; the next request here is sent at once.
            msg_id = kc.execute(sleep_cell(60, "go"), stop_on_error=False)
            deadline = time.monotonic() + 30
            while True:
                m = kc.get_iopub_msg(max(0.0, deadline - time.monotonic()))
                if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "stream":
                    break
            # Interrupt once the main thread sleeps (see helpers.main_thread_sleeping).
            wait_until_sleeping(km.process.pid)
            t0 = time.monotonic()
            km.interrupt_kernel()
            while True:
                reply = kc.get_shell_msg(max(0.0, t0 + 30 - time.monotonic()))
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            assert reply["content"]["ename"] == "KeyboardInterrupt"
            # Far below the 60 s the sleep would take if a helper thread had the signal.
            assert time.monotonic() - t0 < 20
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

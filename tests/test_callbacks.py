"""The callback dispatcher: callbacks off the loop, in order per key, and no
thread left once it is idle."""

from __future__ import annotations

import threading

from helpers import wait_for
from kernelkeeper.callbacks import Dispatcher


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kk-callbacks-test"]


def test_idle_threads_end_and_work_after_that_still_runs_in_order() -> None:
    d = Dispatcher(max_workers=2, idle_exit=0.2, name="kk-callbacks-test")
    seen: list[int] = []
    done = threading.Event()
    try:
        for i in range(50):
            d.submit("k", seen.append, i)
        d.submit("k", done.set)
        assert done.wait(10)
        assert seen == list(range(50))
        assert _workers()  # a thread ran them
        wait_for(lambda: not _workers(), 10)  # and ended once idle
        done.clear()
        d.submit("k", seen.append, 50)
        d.submit("k", done.set)
        assert done.wait(10) and seen[-1] == 50  # a new thread on demand
    finally:
        d.close()
    assert not _workers()

"""One kernel's lifecycle, per library: start, shutdown, restart, interrupt.

(1) start to ready, (3) shutdown, (2) restart and (6) interrupt, through each
library's blocking API; run in a child of bench.py (see ``bench_child``).
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from typing import Any

from bench_common import (
    LIBS,
    REPLY_TIMEOUT,
    STARTUP_TIMEOUT,
    Params,
    Row,
    alive,
    ms,
    orders,
    progress,
)
from bench_kernels import LIVE, drain, one_kernel_each, start_kernel

ByMode = dict[tuple[str, bool], list[float]]  # (library, now) -> samples


def _by_mode() -> ByMode:
    return {(lib, now): [] for lib in LIBS for now in (False, True)}


def _mode_rows(
    workload: str, res: ByMode, labels: tuple[str, str], target: str, rule: str
) -> list[Row]:
    """A figure measured with now=False (it has the target) and with now=True."""
    return [
        Row(workload, labels[0], "ms", res[("kk", False)], res[("jc", False)], target, rule),
        Row(workload, labels[1], "ms", res[("kk", True)], res[("jc", True)]),
    ]


def bench_lifecycle(p: Params, want_start: bool, want_shutdown: bool) -> list[Row]:
    """(1) start to ready and (3) shutdown, measured on the same kernels.

    Each repetition, for now=False then now=True and for each library in
    alternating order: start (timed), stop the client's channels (untimed),
    shutdown_kernel(now=...) (timed). The import floor is timed alongside.
    """
    progress(f"start/shutdown: {p.repeat} repetitions x 2 modes x 2 libraries")
    start: dict[str, list[float]] = {lib: [] for lib in LIBS}
    down = _by_mode()
    floor: list[float] = []
    for i, order in orders(p.repeat):
        for now in (False, True):
            for lib in order:
                alive(f"{lib}: start, then shutdown_kernel(now={now}) (repetition {i + 1})")
                t0 = time.perf_counter()
                km, kc = start_kernel(lib)
                t1 = time.perf_counter()
                start[lib].append(ms(t1 - t0))
                LIVE.discard(km)
                try:
                    kc.stop_channels()
                finally:
                    t2 = time.perf_counter()
                    try:
                        km.shutdown_kernel(now=now)
                    except BaseException:
                        with contextlib.suppress(Exception):
                            km.shutdown_kernel(now=True)
                        raise
                    down[(lib, now)].append(ms(time.perf_counter() - t2))
        if want_start:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import ipykernel.kernelapp"], check=True)
            floor.append(ms(time.perf_counter() - t0))
    rows: list[Row] = []
    if want_start:
        rows.append(
            Row(
                "start",
                "start → ready (blocking start_new_kernel)",
                "ms",
                start["kk"],
                start["jc"],
                "≤ 0.65",
                "ratio<=0.65",
            )
        )
        fm = statistics.median(floor)
        rows.append(
            Row(
                "start",
                'floor: `python -c "import ipykernel.kernelapp"`',
                "ms",
                floor,
                None,
                jc_text="(same floor)",
                extra={"floor": floor},
            )
        )
        over = {lib: [x - fm for x in start[lib]] for lib in LIBS}
        rows.append(Row("start", "start → ready minus floor median", "ms", over["kk"], over["jc"]))
    if want_shutdown:
        labels = (
            "graceful shutdown (shutdown_kernel(now=False))",
            "immediate shutdown (shutdown_kernel(now=True))",
        )
        rows += _mode_rows("shutdown", down, labels, "≤ 0.6", "ratio<=0.6")
    return rows


def bench_restart(p: Params) -> list[Row]:
    """(2) restart_kernel(now=...) then client.wait_for_ready, on one kernel per library."""
    progress(f"restart: {p.repeat} repetitions x 2 modes x 2 libraries")
    res = _by_mode()
    with one_kernel_each() as kernels:
        for lib in LIBS:  # warm-up: one untimed restart each
            alive(f"{lib}: warm-up restart")
            km, kc = kernels[lib]
            km.restart_kernel(now=True)
            kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
        for i, order in orders(p.repeat):
            for now in (False, True):
                for lib in order:
                    alive(f"{lib}: restart_kernel(now={now}) → ready (repetition {i + 1})")
                    km, kc = kernels[lib]
                    # Untimed: drop replies queued from earlier waits. jupyter_client's
                    # wait_for_ready takes any kernel_info_reply, so a leftover one
                    # would make it return before the new kernel is up.
                    drain(kc)
                    t0 = time.perf_counter()
                    km.restart_kernel(now=now)
                    kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
                    res[(lib, now)].append(ms(time.perf_counter() - t0))
    labels = ("restart now=False → ready", "restart now=True → ready")
    return _mode_rows("restart", res, labels, "≤ 0.8", "ratio<=0.8")


def _interrupt_once(km: Any, kc: Any) -> float:
    """Run time.sleep(10); once it runs, interrupt and time until the error reply."""
    drain(kc)
    msg_id = kc.execute("import time; time.sleep(10)")
    deadline = time.monotonic() + REPLY_TIMEOUT
    while True:  # the kernel has started executing our request
        m = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "execute_input":
            break
    time.sleep(0.05)  # let it get into time.sleep
    t0 = time.perf_counter()
    km.interrupt_kernel()
    while True:
        reply = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    dt = time.perf_counter() - t0
    content = reply["content"]
    if content.get("status") != "error" or content.get("ename") != "KeyboardInterrupt":
        raise RuntimeError(f"unexpected reply to the interrupted execution: {content}")
    while True:  # wait for idle so the next round starts clean (untimed)
        m = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if (
            m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] == "status"
            and m["content"].get("execution_state") == "idle"
        ):
            break
    return dt


def bench_interrupt(p: Params) -> list[Row]:
    """(6) interrupt_kernel during time.sleep(10) until the KeyboardInterrupt reply."""
    progress(f"interrupt: {max(p.repeat, 3)} repetitions x 2 libraries")
    res: dict[str, list[float]] = {lib: [] for lib in LIBS}
    with one_kernel_each() as kernels:
        for lib in LIBS:  # warm-up
            alive(f"{lib}: warm-up interrupt")
            _interrupt_once(*kernels[lib])
        for i, order in orders(max(p.repeat, 3)):
            for lib in order:
                alive(f"{lib}: interrupt (repetition {i + 1})")
                res[lib].append(ms(_interrupt_once(*kernels[lib])))
    return [Row("interrupt", "interrupt → KeyboardInterrupt reply", "ms", res["kk"], res["jc"])]

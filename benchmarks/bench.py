#!/usr/bin/env python
"""kernelkeeper vs jupyter_client: the same workloads, in the same run.

Run from the repository root with the project's virtualenv::

    .venv/bin/python benchmarks/bench.py            # full run (< 10 min)
    .venv/bin/python benchmarks/bench.py --quick    # smoke-sized run (< 1 min)
    .venv/bin/python benchmarks/bench.py --only start,roundtrip --repeat 20 --json out.json

Both libraries run the same workload alternately (kk, jc, then jc, kk, ...)
after a warm-up, and the script prints one markdown table with min / median /
max for each library, the ratio of the medians (kernelkeeper / jupyter_client),
the target and whether it is met. The resource and start/stop-cycle workloads
run each library in a fresh child process (``--child``) so that their threads,
file descriptors and RSS are not mixed.

Every workload that starts kernels runs in a child process of this script
(``--child``); the parent only starts children, reads their progress events
and builds the table. A child that stops making progress (no event for
``CHILD_IDLE_TIMEOUT`` s) or overruns its deadline is killed with every
process it started, and the connection files it created are removed: a
library that hangs (e.g. jupyter_client blocking its event loop in a zmq
send to a kernel that never came up) costs a censored trial or a reported
error, never the run. Every kernel is also shut down in a ``finally``, so a
run leaves no kernel processes or connection files; the last lines of the
output say so. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from compiled import compile_package

KERNEL = "python3"  # the same installed kernelspec for both libraries
STARTUP_TIMEOUT = 30.0  # a hung start counts as a failure after this
REPLY_TIMEOUT = 30.0
# A child that sends no event for this long is killed (every timed step of every
# workload sends one, and each step is bounded by STARTUP_TIMEOUT or REPLY_TIMEOUT
# unless the library blocks).
CHILD_IDLE_TIMEOUT = STARTUP_TIMEOUT + 30.0
# "N kernels at once": from the first start to all started; past it the trial is
# killed and every kernel not ready by then counts as a failed start.
TRIAL_DEADLINE = STARTUP_TIMEOUT + 15.0
STOP_DEADLINE = 60.0  # stopping a trial's kernels afterwards
LIBS = ("kk", "jc")
LIB_NAMES = {"kk": "kernelkeeper", "jc": "jupyter_client"}
WORKLOADS = (
    "start",
    "restart",
    "shutdown",
    "concurrent",
    "roundtrip",
    "interrupt",
    "resources",
    "pool",
    "multi",
    "idle",
    "cycles",
)


# -----------------------------------------------------------------------------
# Parameters
# -----------------------------------------------------------------------------


@dataclass
class Params:
    quick: bool
    repeat: int  # timed repetitions per lifecycle figure and library
    calls: int  # round trips per message type and library
    concurrent_sizes: tuple[int, ...]
    concurrent_rounds: int
    resource_kernels: int
    cycles: int
    cycle_warmup: int
    multi_size: int  # kernels started at once through the multi-kernel managers
    multi_rounds: int
    idle_kernels: int  # idle kernels under one multi-kernel manager
    idle_batch: int  # started this many at a time
    idle_seconds: float  # how long their manager's CPU is measured

    @classmethod
    def make(cls, quick: bool, repeat: int | None, calls: int | None) -> Params:
        if quick:
            return cls(
                quick=True,
                repeat=repeat or 2,
                calls=calls or 50,
                concurrent_sizes=(8,),
                concurrent_rounds=1,
                resource_kernels=4,
                cycles=6,
                cycle_warmup=1,
                multi_size=4,
                multi_rounds=1,
                idle_kernels=8,
                idle_batch=4,
                idle_seconds=5.0,
            )
        return cls(
            quick=False,
            repeat=repeat or 8,
            calls=calls or 200,
            concurrent_sizes=(8, 16, 32),
            concurrent_rounds=2,
            resource_kernels=16,
            cycles=200,
            cycle_warmup=3,
            multi_size=16,
            multi_rounds=2,
            idle_kernels=64,
            idle_batch=8,
            idle_seconds=20.0,
        )


# -----------------------------------------------------------------------------
# Results
# -----------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table. ``kk``/``jc`` hold the raw samples."""

    workload: str
    label: str
    unit: str  # "ms", "s", "count", "MiB", ""
    kk: list[float] | None = None
    jc: list[float] | None = None
    target: str = "—"
    # "ratio<=X" (kk median / jc median), "kk<=X" (absolute kk median), or ""
    rule: str = ""
    kk_text: str | None = None  # overrides the formatted kk cell
    jc_text: str | None = None
    kk_note: str = ""  # appended to the cell, e.g. trials killed and left out
    jc_note: str = ""
    met_override: bool | None = None
    show_ratio: bool = True  # False where a ratio means nothing (growth figures)
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self, lib: str) -> float | None:
        xs = getattr(self, lib)
        return statistics.median(xs) if xs else None

    def ratio(self) -> float | None:
        if not self.show_ratio:
            return None
        a, b = self.median("kk"), self.median("jc")
        if a is None or b is None or b == 0:
            return None
        return a / b

    def met(self) -> bool | None:
        if self.met_override is not None:
            return self.met_override
        if not self.rule:
            return None
        m = re.fullmatch(r"(ratio|kk)(<=|<)(-?[0-9.]+)", self.rule)
        if m is None:
            raise ValueError(f"bad rule {self.rule!r}")
        kind, op, bound = m.group(1), m.group(2), float(m.group(3))
        value = self.ratio() if kind == "ratio" else self.median("kk")
        if value is None:
            return None
        return value <= bound if op == "<=" else value < bound


def fmt_num(x: float, unit: str) -> str:
    if unit == "count":
        return f"{x:.0f}"
    if unit == "MiB":
        return f"{x:.1f}"
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt_cell(xs: list[float] | None, unit: str) -> str:
    if not xs:
        return "—"
    u = f" {unit}" if unit and unit != "count" else ""
    if len(xs) == 1:
        return fmt_num(xs[0], unit) + u
    lo, med, hi = min(xs), statistics.median(xs), max(xs)
    return f"{fmt_num(lo, unit)} / {fmt_num(med, unit)} / {fmt_num(hi, unit)}{u}"


def p99(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


def render_table(rows: list[Row]) -> str:
    head = (
        "| workload | kk min / median / max | jc min / median / max "
        "| ratio (kk/jc median) | target | met? |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        kk = r.kk_text if r.kk_text is not None else fmt_cell(r.kk, r.unit)
        jc = r.jc_text if r.jc_text is not None else fmt_cell(r.jc, r.unit)
        kk += f"; {r.kk_note}" if r.kk_note else ""
        jc += f"; {r.jc_note}" if r.jc_note else ""
        ratio = r.ratio()
        rs = "—" if ratio is None else f"{ratio:.2f}"
        m = re.fullmatch(r"ratio<=?([0-9.]+)", r.rule)
        if ratio is not None and m and rs == f"{float(m.group(1)):.2f}":
            rs = f"{ratio:.3f}"  # two decimals would hide which side of the target it is
        met = r.met()
        ms = "—" if met is None else ("yes" if met else "**NO**")
        lines.append(f"| {r.label} | {kk} | {jc} | {rs} | {r.target} | {ms} |")
    return "\n".join(lines)


def kk_source() -> dict[str, str]:
    """Which kernelkeeper the children import: a digest of its source files and,
    in a git checkout, the commit (``+dirty`` with uncommitted changes in it).

    Every child imports kernelkeeper afresh, so an edit during a run would mix
    two versions in one table; main() compares the digest at the start and end.
    """
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("kernelkeeper")
    if spec is None or not spec.submodule_search_locations:
        return {"digest": "?", "commit": "?"}
    pkg = next(iter(spec.submodule_search_locations))
    h = hashlib.sha256()
    for name in sorted(os.listdir(pkg)):
        if name.endswith(".py"):
            with open(os.path.join(pkg, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    commit = "not a git checkout"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "-C", pkg, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if rev.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", pkg, "status", "--porcelain", "--", "."],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            commit = rev.stdout.strip() + ("+dirty" if dirty else "")
    return {"digest": h.hexdigest()[:12], "commit": commit}


def machine_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    import zmq

    vm = psutil.virtual_memory()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": round(vm.total / 2**30, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernelkeeper": v("kernelkeeper"),
        "kernelkeeper_source": kk_source(),
        "jupyter_client": v("jupyter_client"),
        "ipykernel": v("ipykernel"),
        "pyzmq": v("pyzmq"),
        "libzmq": zmq.zmq_version(),
    }
    try:
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


# -----------------------------------------------------------------------------
# Library adapters (blocking API) and a registry of everything still running
# -----------------------------------------------------------------------------


class Live:
    """Every (manager, client) started by this process, so a finally can stop them."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, Any, Any]] = []

    def add(self, lib: str, km: Any, kc: Any) -> None:
        self.pairs.append((lib, km, kc))

    def discard(self, km: Any) -> None:
        self.pairs = [p for p in self.pairs if p[1] is not km]

    def close_all(self) -> None:
        pairs, self.pairs = self.pairs, []
        for lib, km, kc in pairs:
            stop_kernel(lib, km, kc, now=True)


LIVE = Live()


def start_kernel(lib: str) -> tuple[Any, Any]:
    """Start a kernel with the library's blocking start_new_kernel; returns (km, kc)."""
    if lib == "kk":
        import kernelkeeper

        km, kc = kernelkeeper.start_new_kernel(
            startup_timeout=STARTUP_TIMEOUT, kernel_name=KERNEL, stderr=subprocess.DEVNULL
        )
    else:
        from jupyter_client.manager import start_new_kernel

        km, kc = start_new_kernel(
            startup_timeout=STARTUP_TIMEOUT, kernel_name=KERNEL, stderr=subprocess.DEVNULL
        )
    LIVE.add(lib, km, kc)
    return km, kc


def stop_kernel(lib: str, km: Any, kc: Any, now: bool = True) -> None:
    """Stop the client's channels and shut the kernel down (never raises)."""
    LIVE.discard(km)
    try:
        if kc is not None:
            kc.stop_channels()
    except Exception as e:
        warn(f"{lib}: stop_channels failed: {e!r}")
    finally:
        try:
            km.shutdown_kernel(now=now)
        except Exception as e:
            warn(f"{lib}: shutdown_kernel failed: {e!r}")
            with contextlib.suppress(Exception):
                km.shutdown_kernel(now=True)


@contextlib.contextmanager
def one_kernel_each() -> Iterator[dict[str, tuple[Any, Any]]]:
    kernels: dict[str, tuple[Any, Any]] = {}
    try:
        for lib in LIBS:
            alive(f"{lib}: start")
            kernels[lib] = start_kernel(lib)
        yield kernels
    finally:
        for lib, (km, kc) in kernels.items():
            stop_kernel(lib, km, kc, now=True)


def orders(n: int) -> Iterator[tuple[int, tuple[str, str]]]:
    """Repetition index and library order, alternating kk-first and jc-first."""
    for i in range(n):
        yield i, (LIBS if i % 2 == 0 else LIBS[::-1])


# -- events: how a child reports to the parent ----------------------------------

EVENT_FD: int | None = None  # in a child: the write end of the parent's event pipe


def emit(kind: str, **data: Any) -> None:
    """Send one event (a JSON line) to the parent; a no-op in the parent itself.

    Optional keys the parent acts on: ``step`` (what the child is doing now, for
    the kill message), ``deadline_s`` (the current phase must end, i.e. a later
    event must set a new deadline, within this many seconds; None clears it).
    Every event also restarts the parent's idle timer.
    """
    if EVENT_FD is None:
        return
    buf = (json.dumps({"kind": kind, **data}, default=str) + "\n").encode()
    while buf:
        buf = buf[os.write(EVENT_FD, buf) :]


def alive(step: str) -> None:
    """A heartbeat before each timed operation: the parent kills a silent child."""
    emit("alive", step=step)


def warn(msg: str) -> None:
    if EVENT_FD is not None:
        emit("warning", msg=msg)
    else:
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def progress(msg: str) -> None:
    if EVENT_FD is not None:
        emit("progress", msg=msg, step=msg)
    else:
        print(f"# {msg}", file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return seconds * 1000.0


# -----------------------------------------------------------------------------
# Workloads
# -----------------------------------------------------------------------------


def warm_up() -> None:
    """Import both libraries and run one full start/stop each (untimed)."""
    progress("warm-up: one start/stop per library")
    for lib in LIBS:
        alive(f"{lib}: warm-up start/stop")
        km, kc = start_kernel(lib)
        stop_kernel(lib, km, kc, now=False)
    subprocess.run([sys.executable, "-c", "import ipykernel.kernelapp"], check=True)


def bench_lifecycle(p: Params, want_start: bool, want_shutdown: bool) -> list[Row]:
    """(1) start to ready and (3) shutdown, measured on the same kernels.

    Each repetition, for now=False then now=True and for each library in
    alternating order: start (timed), stop the client's channels (untimed),
    shutdown_kernel(now=...) (timed). The import floor is timed alongside.
    """
    progress(f"start/shutdown: {p.repeat} repetitions x 2 modes x 2 libraries")
    start: dict[str, list[float]] = {lib: [] for lib in LIBS}
    down: dict[tuple[str, bool], list[float]] = {
        (lib, now): [] for lib in LIBS for now in (False, True)
    }
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
        rows.append(
            Row(
                "shutdown",
                "graceful shutdown (shutdown_kernel(now=False))",
                "ms",
                down[("kk", False)],
                down[("jc", False)],
                "≤ 0.6",
                "ratio<=0.6",
            )
        )
        rows.append(
            Row(
                "shutdown",
                "immediate shutdown (shutdown_kernel(now=True))",
                "ms",
                down[("kk", True)],
                down[("jc", True)],
            )
        )
    return rows


def bench_restart(p: Params) -> list[Row]:
    """(2) restart_kernel(now=...) then client.wait_for_ready, on one kernel per library."""
    progress(f"restart: {p.repeat} repetitions x 2 modes x 2 libraries")
    res: dict[tuple[str, bool], list[float]] = {
        (lib, now): [] for lib in LIBS for now in (False, True)
    }
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
                    _drain(kc)
                    t0 = time.perf_counter()
                    km.restart_kernel(now=now)
                    kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
                    res[(lib, now)].append(ms(time.perf_counter() - t0))
    return [
        Row(
            "restart",
            "restart now=False → ready",
            "ms",
            res[("kk", False)],
            res[("jc", False)],
            "≤ 0.8",
            "ratio<=0.8",
        ),
        Row("restart", "restart now=True → ready", "ms", res[("kk", True)], res[("jc", True)]),
    ]


def _errtext(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:200]


@dataclass
class Hooks:
    """What one "N at once" trial reports to the parent while it runs."""

    report: bool = False  # False for the untimed warm-up
    ready: set[str] = field(default_factory=set)  # connection files of ready kernels
    timer: threading.Timer | None = None

    def on_ready(self, km: Any) -> None:
        self.ready.add(os.path.abspath(km.connection_file))
        if self.report:
            emit("ready", n=len(self.ready))

    def on_failed(self, e: BaseException) -> None:
        if self.report:
            emit("failed", error=_errtext(e))

    def on_started(self, wall: float, errors: list[BaseException]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.report:
            emit(
                "started",
                wall_ms=ms(wall),
                errors=[_errtext(e) for e in errors],
                step="stopping the trial's kernels",
                deadline_s=STOP_DEADLINE,
            )


async def _kk_many(n: int, hooks: Hooks) -> tuple[float, list[BaseException]]:
    import kernelkeeper

    async def one() -> tuple[Any, Any]:
        try:
            km, kc = await kernelkeeper.async_start_new_kernel(
                startup_timeout=STARTUP_TIMEOUT, kernel_name=KERNEL, stderr=subprocess.DEVNULL
            )
        except BaseException as e:
            hooks.on_failed(e)
            raise
        hooks.on_ready(km)
        return km, kc

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    wall = time.perf_counter() - t0
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    hooks.on_started(wall, errors)

    async def stop(km: Any, kc: Any) -> None:
        try:
            await kc.aclose()
        finally:
            await km.shutdown_kernel(now=True)

    stopped = await asyncio.gather(*(stop(km, kc) for km, kc in ok), return_exceptions=True)
    for e in stopped:
        if isinstance(e, BaseException):
            warn(f"kk: shutdown after concurrent start failed: {e!r}")
    return wall, errors


async def _jc_many(n: int, hooks: Hooks) -> tuple[float, list[BaseException]]:
    from jupyter_client.manager import AsyncKernelManager

    kms: list[Any] = []
    kcs: list[Any] = []

    async def one() -> None:
        try:
            km = AsyncKernelManager(kernel_name=KERNEL)
            kms.append(km)
            await km.start_kernel(stderr=subprocess.DEVNULL)
            kc = km.client()
            kcs.append(kc)
            kc.start_channels()
            # Can block the whole event loop for good: jupyter_client's Session.send
            # sends on a synchronous shadow of the asyncio socket, so when the shell
            # DEALER has no peer left the send never returns and no asyncio timeout
            # can fire. Only the parent's deadline (it kills this process) ends that.
            await kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
        except BaseException as e:
            hooks.on_failed(e)
            raise
        hooks.on_ready(km)

    try:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        wall = time.perf_counter() - t0
        errors = [r for r in results if isinstance(r, BaseException)]
        hooks.on_started(wall, errors)
    finally:
        for kc in kcs:
            with contextlib.suppress(Exception):
                kc.stop_channels()
        stopped = await asyncio.gather(
            *(km.shutdown_kernel(now=True) for km in kms if km.has_kernel), return_exceptions=True
        )
        for e in stopped:
            if isinstance(e, BaseException):
                warn(f"jc: shutdown after concurrent start failed: {e!r}")
    return wall, errors


def _kk_mkm() -> Any:
    """kernelkeeper's multi-kernel manager as a notebook server runs it (autorestart on)."""
    import kernelkeeper

    return kernelkeeper.AsyncMultiKernelManager(
        kernel_manager_kw={"autorestart": True}, ready_timeout=STARTUP_TIMEOUT
    )


def _jc_mkm() -> Any:
    """jupyter_client's AsyncMultiKernelManager with its defaults (its kernels autorestart)."""
    from jupyter_client.multikernelmanager import AsyncMultiKernelManager

    return AsyncMultiKernelManager()


async def _kk_mkm_start(mkm: Any) -> str:
    """One kernel through kernelkeeper's manager: start_kernel returns once it is ready."""
    return str(await mkm.start_kernel(KERNEL, stderr=subprocess.DEVNULL))


async def _jc_mkm_start(mkm: Any) -> str:
    """One kernel through jupyter_client's manager, then a client's wait_for_ready:
    its start_kernel returns once the process is launched, before the kernel is ready."""
    kid = str(await mkm.start_kernel(kernel_name=KERNEL, stderr=subprocess.DEVNULL))
    kc = mkm.get_kernel(kid).client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=STARTUP_TIMEOUT)  # can block the loop (see _jc_many)
    finally:
        kc.stop_channels()
    return kid


async def _mkm_many(lib: str, n: int, hooks: Hooks) -> tuple[float, list[BaseException]]:
    """N starts at once (``asyncio.gather``) through one multi-kernel manager."""
    mkm = _kk_mkm() if lib == "kk" else _jc_mkm()
    start = _kk_mkm_start if lib == "kk" else _jc_mkm_start

    async def one() -> None:
        try:
            kid = await start(mkm)
        except BaseException as e:
            hooks.on_failed(e)
            raise
        hooks.on_ready(mkm.get_kernel(kid))

    wall = 0.0
    try:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        wall = time.perf_counter() - t0
        errors = [r for r in results if isinstance(r, BaseException)]
        hooks.on_started(wall, errors)
    finally:
        await _mkm_close(lib, mkm)
    return wall, errors


async def _mkm_close(lib: str, mkm: Any) -> None:
    try:
        await mkm.shutdown_all(now=True)
    except Exception as e:
        warn(f"{lib}: shutdown_all failed: {e!r}")
    if lib == "kk":
        await mkm.aclose()


async def _kk_mkm_many(n: int, hooks: Hooks) -> tuple[float, list[BaseException]]:
    return await _mkm_many("kk", n, hooks)


async def _jc_mkm_many(n: int, hooks: Hooks) -> tuple[float, list[BaseException]]:
    return await _mkm_many("jc", n, hooks)


BASE_ENV = "KKBENCH_BASE"  # the run's private directory (set by the parent)


def _conn_file_arg(cmdline: Sequence[str], base: str) -> str | None:
    """The connection file in a kernel's command line, if it is in our private dir."""
    for arg in cmdline:
        k = arg.find(base) if base else -1
        if k >= 0:
            return arg[k:]
    return None


def _conn_files() -> list[str]:
    """Connection files in the run's private directory (absolute paths).

    ``runtime/kernel-*.json``: JUPYTER_RUNTIME_DIR, used by kernelkeeper and by
    jupyter_client's AsyncKernelManager; ``tmp/*.json``: TMPDIR, where
    jupyter_client's ``start_new_kernel`` writes its connection files (a
    KernelManager without a connection_file uses ``tempfile.mkstemp``).
    """
    base = os.environ.get(BASE_ENV, "")
    if not base:
        return []
    found = []
    for sub, prefix in (("runtime", "kernel-"), ("tmp", "")):
        d = os.path.join(base, sub)
        if os.path.isdir(d):
            found += [
                os.path.join(d, f)
                for f in os.listdir(d)
                if f.startswith(prefix) and f.endswith(".json")
            ]
    return sorted(found)


def _diagnose(hooks: Hooks, main_ident: int) -> None:
    """Just before the parent kills a trial (runs on a timer thread, which still
    runs when the main thread is stuck in a C call that released the GIL): where
    the main thread is, and what became of the kernels that are not ready. Goes
    to the JSON dump."""
    try:
        frame = sys._current_frames().get(main_ident)
        stack = [ln.strip() for ln in traceback.format_stack(frame)][-10:] if frame else []
        base = os.environ.get(BASE_ENV, "")
        procs: dict[str, psutil.Process] = {}
        for pr in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cf = _conn_file_arg(pr.cmdline(), base)
                if cf:
                    procs[os.path.abspath(cf)] = pr
        try:
            conns = [
                (c, getattr(c.laddr, "port", None), getattr(c.raddr, "port", None))
                for c in psutil.net_connections("tcp")
            ]
        except (psutil.Error, OSError):
            conns = []
        pending = []
        for name in _conn_files():
            if name in hooks.ready:
                continue
            entry: dict[str, Any] = {"connection_file": os.path.relpath(name, base)}
            kp = procs.get(name)
            try:
                entry["process"] = f"pid {kp.pid} {kp.status()}" if kp else "none (exited)"
            except psutil.Error:
                entry["process"] = "none (exited)"
            try:
                with open(name) as f:
                    ports = {k: v for k, v in json.load(f).items() if k.endswith("_port")}
            except (OSError, ValueError):
                ports = {}
            entry["ports"] = ports
            entry["port_users"] = {  # sockets on either end of a connection to the port
                k: [f"pid {c.pid} {c.status} {lp}->{rp}" for c, lp, rp in conns if port in (lp, rp)]
                for k, port in ports.items()
                if port
            }
            pending.append(entry)
        emit("diagnosis", main_thread=stack, ready=len(hooks.ready), pending=pending)
    except Exception as e:
        emit("diagnosis", error=repr(e))


def child_concurrent(lib: str, n: int, api: str = "new") -> dict[str, Any]:
    """One "N at once" trial in this (child) process: an untimed warm-up start/stop
    with the same API, then N starts at once. ``api``: ``new`` (one manager per
    kernel) or ``mkm`` (one multi-kernel manager for all)."""
    if api == "mkm":
        many = _kk_mkm_many if lib == "kk" else _jc_mkm_many
    else:
        many = _kk_many if lib == "kk" else _jc_many

    async def run() -> dict[str, Any]:
        alive(f"{lib}: warm-up start/stop (untimed)")
        _wall, errors = await many(1, Hooks())
        if errors:
            raise RuntimeError(f"warm-up start failed: {_errtext(errors[0])}")
        hooks = Hooks(report=True)
        hooks.timer = threading.Timer(
            TRIAL_DEADLINE - 5, _diagnose, args=(hooks, threading.get_ident())
        )
        hooks.timer.daemon = True
        emit("t0", step=f"{lib}: {n} kernels at once", deadline_s=TRIAL_DEADLINE)
        hooks.timer.start()
        wall, errors = await many(n, hooks)
        return {"wall_ms": ms(wall), "errors": [_errtext(e) for e in errors]}

    return asyncio.run(run())


def _concurrent_trial(lib: str, n: int, api: str = "new") -> dict[str, Any]:
    """Run one trial in a child; a trial killed at its deadline is censored (no wall
    time) and every kernel not ready by then counts as a failed start."""
    run = run_child(
        ["--child", "concurrent", "--lib", lib, "--kernels", str(n), "--api", api],
        timeout=CHILD_IDLE_TIMEOUT + TRIAL_DEADLINE + STOP_DEADLINE + 30,
    )
    out: dict[str, Any] = {"lib": lib, "n": n, "wall_ms": None, "errors": [], "censored": None}
    out.update(run.summary())
    done = run.result if run.result is not None else run.first("started")
    if done is not None:
        out["wall_ms"], out["errors"] = done["wall_ms"], done["errors"]
        if run.result is None:  # the starts finished; stopping the kernels did not
            out["stop_problem"] = run.why()
            warn(f"{lib}: {n} at once: stopping the kernels failed: {run.why()}")
        return out
    if run.first("t0") is None:  # no kernel of the trial was started
        out["censored"] = f"not run, warm-up start failed: {run.why()}"
        warn(f"{lib}: {n} at once: {out['censored']}")
        return out
    ready = len(run.all("ready"))
    failed = [e["error"] for e in run.all("failed")]
    lost = max(0, n - ready - len(failed))
    out["errors"] = failed + [f"not ready when the trial was {run.why()}"] * lost
    out["censored"] = run.why()
    out["ready"] = ready
    diag = run.first("diagnosis")
    if diag is not None:
        out["diagnosis"] = diag
    warn(
        f"{lib}: {n} at once: trial {run.why()}; {ready} of {n} kernels were ready, "
        f"{n - ready} count as failed starts"
    )
    return out


def _short(reason: str) -> str:
    """'killed (45 s deadline passed) during ...' -> 'killed: 45 s deadline passed'."""
    m = re.match(r"killed \(([^)]*)\)", reason)
    return f"killed: {m.group(1)}" if m else reason.split(":")[0]


def bench_concurrent(p: Params) -> list[Row]:
    """(4) N kernels started at once (async API) until all are ready; failures counted.

    Each trial runs in a fresh child (both libraries alike) with a hard deadline,
    so a library that hangs yields a censored trial and failed starts, not a hung run.
    """
    progress(f"concurrent: sizes {p.concurrent_sizes} x {p.concurrent_rounds} rounds x 2 libraries")
    trials: dict[tuple[str, int], list[dict[str, Any]]] = {
        (lib, n): [] for n in p.concurrent_sizes for lib in LIBS
    }
    for _i, order in orders(p.concurrent_rounds):
        for n in p.concurrent_sizes:
            for lib in order:
                progress(f"  {lib}: {n} at once")
                trials[(lib, n)].append(_concurrent_trial(lib, n))
    rows: list[Row] = []
    for n in p.concurrent_sizes:
        target, rule = ("≤ 0.9", "ratio<=0.9") if n == 32 else ("—", "")
        walls = {
            lib: [t["wall_ms"] for t in trials[(lib, n)] if t["wall_ms"] is not None]
            for lib in LIBS
        }
        cut = {lib: [t for t in trials[(lib, n)] if t["censored"]] for lib in LIBS}
        notes = {
            lib: (
                f"{len(cut[lib])} more trial(s) not in the figures ("
                + "; ".join(sorted({_short(t["censored"]) for t in cut[lib]}))
                + ")"
                if cut[lib]
                else ""
            )
            for lib in LIBS
        }
        row = Row(
            "concurrent",
            f"{n} kernels at once → all ready (wall)",
            "ms",
            walls["kk"],
            walls["jc"],
            target,
            rule,
            kk_note=notes["kk"],
            jc_note=notes["jc"],
            extra={"trials": {lib: trials[(lib, n)] for lib in LIBS}},
        )
        if rule and cut["kk"]:
            row.met_override = False  # kernelkeeper itself did not finish a trial
        rows.append(row)
        total = n * p.concurrent_rounds
        fails = {lib: [e for t in trials[(lib, n)] for e in t["errors"]] for lib in LIBS}
        text = {}
        for lib in LIBS:
            text[lib] = f"{len(fails[lib])} of {total}"
            hung = sum(len(t["errors"]) for t in cut[lib])
            if hung:
                text[lib] += f" ({hung} not ready in {len(cut[lib])} killed trial(s))"
        rows.append(
            Row(
                "concurrent",
                f"{n} kernels at once: failed starts",
                "count",
                [len(fails["kk"])],
                [len(fails["jc"])],
                kk_text=text["kk"],
                jc_text=text["jc"],
                show_ratio=False,
                extra={"kk_errors": fails["kk"], "jc_errors": fails["jc"]},
            )
        )
    return rows


def _drain(kc: Any) -> None:
    """Discard whatever is queued on the client's iopub and shell channels."""
    for get in (kc.get_iopub_msg, kc.get_shell_msg):
        while True:
            try:
                get(timeout=0.05)
            except Exception:
                break


class RawShell:
    """The floor of a round trip: a bare synchronous pyzmq DEALER plus
    jupyter_client's Session, no iopub, no threads, no event loop."""

    def __init__(self, km: Any) -> None:
        import zmq
        from jupyter_client.session import Session

        info = km.get_connection_info()
        key = info["key"] if isinstance(info["key"], bytes) else info["key"].encode()
        self.session = Session(key=key, signature_scheme=info["signature_scheme"])
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(f"{info['transport']}://{info['ip']}:{info['shell_port']}")

    def request(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        sent = self.session.send(self.sock, msg_type, content)
        assert sent is not None
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            if not self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                raise TimeoutError(f"no {msg_type} reply within {REPLY_TIMEOUT} s")
            _idents, msg = self.session.recv(self.sock, mode=0)
            if msg is not None and msg["parent_header"].get("msg_id") == sent["msg_id"]:
                return msg  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


EXECUTE_1P1 = {
    "code": "1+1",
    "silent": False,
    "store_history": True,
    "user_expressions": {},
    "allow_stdin": False,
    "stop_on_error": True,
}


def _client_calls(kc: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """A client's blocking kernel_info and execute("1+1") round trips."""

    def kernel_info() -> Any:
        return kc.kernel_info(reply=True, timeout=REPLY_TIMEOUT)

    def execute() -> Any:
        return kc.execute("1+1", reply=True, timeout=REPLY_TIMEOUT)

    return kernel_info, execute


def bench_roundtrip(p: Params) -> list[Row]:
    """(5) kernel_info and execute("1+1") round trips (blocking, reply=True).

    A third, raw pyzmq client (see :class:`RawShell`) talks to jupyter_client's
    kernel in the same rotation: the part of a round trip no client removes.
    """
    progress(f"roundtrip: {p.calls} calls x 2 messages x 2 libraries (+ raw floor)")
    kinfo: dict[str, list[float]] = {lib: [] for lib in (*LIBS, "raw")}
    exe: dict[str, list[float]] = {lib: [] for lib in (*LIBS, "raw")}
    with one_kernel_each() as kernels:
        raw = RawShell(kernels["jc"][0])
        try:
            calls: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
                lib: _client_calls(kernels[lib][1]) for lib in LIBS
            }
            calls["raw"] = (
                lambda: raw.request("kernel_info_request", {}),
                lambda: raw.request("execute_request", EXECUTE_1P1),
            )
            for who in calls:  # warm-up
                for _ in range(10):
                    calls[who][0]()
                    calls[who][1]()
            for lib in LIBS:
                _drain(kernels[lib][1])
            for i, order in orders(p.calls):
                alive(f"round trips, call {i + 1}")
                rotation = (*order, "raw") if i % 2 else ("raw", *order)
                for who in rotation:
                    t0 = time.perf_counter()
                    r = calls[who][0]()
                    kinfo[who].append(ms(time.perf_counter() - t0))
                    assert r["msg_type"] == "kernel_info_reply", r["msg_type"]
                for who in rotation:
                    t0 = time.perf_counter()
                    r = calls[who][1]()
                    exe[who].append(ms(time.perf_counter() - t0))
                    assert r["content"]["status"] == "ok", r["content"]
                if i % 50 == 49:  # keep the unread iopub traffic bounded (untimed)
                    for lib in LIBS:
                        _drain(kernels[lib][1])
        finally:
            raw.close()
    rows = [
        Row(
            "roundtrip",
            "kernel_info round trip",
            "ms",
            kinfo["kk"],
            kinfo["jc"],
            "≤ 0.7",
            "ratio<=0.7",
        ),
        Row(
            "roundtrip", "kernel_info round trip p99", "ms", [p99(kinfo["kk"])], [p99(kinfo["jc"])]
        ),
        Row(
            "roundtrip",
            "floor: kernel_info, raw pyzmq DEALER (no client)",
            "ms",
            kinfo["raw"],
            None,
            jc_text="(same floor)",
        ),
        Row(
            "roundtrip",
            'execute("1+1") round trip (shell reply)',
            "ms",
            exe["kk"],
            exe["jc"],
            "≤ 0.9",
            "ratio<=0.9",
        ),
        Row("roundtrip", 'execute("1+1") round trip p99', "ms", [p99(exe["kk"])], [p99(exe["jc"])]),
        Row(
            "roundtrip",
            'floor: execute("1+1"), raw pyzmq DEALER (no client)',
            "ms",
            exe["raw"],
            None,
            jc_text="(same floor)",
        ),
    ]
    for what, times in (("kernel_info", kinfo), ('execute("1+1")', exe)):
        # Paired: each call minus the raw call of the same rotation.
        over = {
            lib: [(a - b) * 1000 for a, b in zip(times[lib], times["raw"], strict=True)]
            for lib in LIBS
        }
        rows.append(
            Row(
                "roundtrip",
                f"{what}: client overhead over the raw floor (paired)",
                "µs",
                over["kk"],
                over["jc"],
                show_ratio=False,
            )
        )
    for r in rows:
        r.extra["calls"] = p.calls
    return rows


def _interrupt_once(km: Any, kc: Any) -> float:
    """Run time.sleep(10); once it runs, interrupt and time until the error reply."""
    _drain(kc)
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


# -- child processes: resources (7) and cycles (9) ------------------------------


def _snapshot() -> dict[str, float]:
    gc.collect()
    me = psutil.Process()
    return {
        "threads": me.num_threads(),
        "fds": me.num_fds() if hasattr(me, "num_fds") else float("nan"),
        "rss_mib": me.memory_info().rss / 2**20,
    }


def child_resources(lib: str, n: int) -> dict[str, Any]:
    alive(f"{lib}: warm-up start/stop")
    km, kc = start_kernel(lib)  # warm-up: the library fully initialised
    stop_kernel(lib, km, kc, now=False)
    time.sleep(0.2)
    idle = _snapshot()
    pairs: list[tuple[Any, Any]] = []
    try:
        for k in range(n):
            alive(f"{lib}: start {k + 1} of {n}")
            pairs.append(start_kernel(lib))
        time.sleep(1.0)  # heartbeats running, everything settled
        busy = _snapshot()
        busy["threads_names"] = sorted(  # type: ignore[assignment]
            t.name for t in threading.enumerate()
        )
    finally:
        alive(f"{lib}: stopping {len(pairs)} kernels")
        for km, kc in pairs:
            stop_kernel(lib, km, kc, now=True)
    after = _snapshot()
    return {"idle": idle, "busy": busy, "after": after}


def child_cycles(lib: str, n: int, warmup: int) -> dict[str, Any]:
    """Start/stop cycles; each one is also sent as an event, so the figures up to a
    cycle that hangs survive the child being killed."""
    errors: list[str] = []

    def cycle() -> bool:
        try:
            km, kc = start_kernel(lib)
        except Exception as e:  # a failed start is counted, not fatal
            errors.append(_errtext(e))
            return False
        stop_kernel(lib, km, kc, now=False)
        return True

    for k in range(warmup):
        alive(f"{lib}: warm-up cycle {k + 1}")
        cycle()
    del errors[:]
    time.sleep(0.2)
    before = _snapshot()
    emit("before", snapshot=before)
    times = []
    for k in range(n):
        alive(f"{lib}: start/stop cycle {k + 1} of {n}")
        t0 = time.perf_counter()
        if cycle():
            times.append(ms(time.perf_counter() - t0))
            emit("cycle", ms=times[-1])
        else:
            emit("cycle", error=errors[-1])
    time.sleep(0.2)
    after = _snapshot()
    return {"before": before, "after": after, "times": times, "errors": errors}


# -- child processes: pool hit (8) and idle kernels (11) -------------------------

# Before each timed take the pool's kernel gets this long after it became ready:
# a pooled kernel is normally taken long after its start, not while its process
# is still finishing its own start-up.
POOL_SETTLE = 1.0


def child_pool(repeat: int) -> dict[str, Any]:
    """Warm-pool hits through kernelkeeper's multi-kernel manager, alternating with
    cold starts through jupyter_client's (which has no pools), in this one child.

    Timed, both alike: ``start_kernel`` → ``client(id)`` → ``start_channels()`` →
    ``wait_for_ready()`` returned. Untimed: the pool's refill after each take
    (``wait_filled``) and the shutdown of the kernel.
    """

    async def run() -> dict[str, Any]:
        import kernelkeeper

        kmkm = kernelkeeper.AsyncMultiKernelManager(
            pools={KERNEL: kernelkeeper.PoolConfig(min_size=1)},
            kernel_manager_kw={"autorestart": True},
            ready_timeout=STARTUP_TIMEOUT,
        )
        jmkm = _jc_mkm()
        times: dict[str, list[float]] = {lib: [] for lib in LIBS}
        misses = 0
        try:
            alive("kk: filling the pool")
            await kmkm.start()
            pool = kmkm._pools[KERNEL]

            async def kk_once() -> float:
                nonlocal misses
                await pool.wait_filled(STARTUP_TIMEOUT)
                await asyncio.sleep(POOL_SETTLE)
                hits = pool.hits
                t0 = time.perf_counter()
                kid = await kmkm.start_kernel(KERNEL, stderr=subprocess.DEVNULL)
                kc = kmkm.client(kid)
                kc.start_channels()
                try:
                    await kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
                    dt = time.perf_counter() - t0
                finally:
                    await kc.aclose()
                if pool.hits == hits:
                    misses += 1  # a cold start after all: counted, and visible in the figures
                await kmkm.shutdown_kernel(kid, now=True)
                await pool.wait_filled(STARTUP_TIMEOUT)  # the refill runs before anything else
                return dt

            async def jc_once() -> float:
                t0 = time.perf_counter()
                kid = await _jc_mkm_start(jmkm)
                dt = time.perf_counter() - t0
                await jmkm.shutdown_kernel(kid, now=True)
                return dt

            once = {"kk": kk_once, "jc": jc_once}
            for lib in LIBS:  # warm-up, untimed
                alive(f"{lib}: warm-up")
                await once[lib]()
            misses = 0
            for i, order in orders(repeat):
                for lib in order:
                    alive(f"{lib}: start → client ready (repetition {i + 1})")
                    times[lib].append(ms(await once[lib]()))
            take_ms = [ms(t) for t in list(pool.take_times)[-repeat:]]
        finally:
            alive("stopping both managers")
            await _mkm_close("kk", kmkm)
            await _mkm_close("jc", jmkm)
        return {"times": times, "misses": misses, "take_ms": take_ms}

    return asyncio.run(run())


def child_idle(lib: str, n: int, batch: int, idle_s: float) -> dict[str, Any]:
    """``n`` kernels under one multi-kernel manager (autorestart on, as a notebook
    server runs them), started ``batch`` at a time; then the manager process's
    threads, fds and RSS, and its CPU time (user + system, kernels not included)
    over ``idle_s`` seconds in which nothing is asked of the kernels."""

    async def run() -> dict[str, Any]:
        me = psutil.Process()
        mkm = _kk_mkm() if lib == "kk" else _jc_mkm()
        start = _kk_mkm_start if lib == "kk" else _jc_mkm_start
        errors: list[str] = []
        try:
            t0 = time.perf_counter()
            done = 0
            while done < n:
                k = min(batch, n - done)
                alive(f"{lib}: starting kernels {done + 1}-{done + k} of {n}")
                got = await asyncio.gather(*(start(mkm) for _ in range(k)), return_exceptions=True)
                errors += [_errtext(e) for e in got if isinstance(e, BaseException)]
                if not done:  # the first batch also initialised the library
                    first = (k, me.memory_info().rss / 2**20)
                done += k
            start_s = time.perf_counter() - t0
            # Let the start-up settle (probes' delayed cleanups, first heartbeats).
            alive(f"{lib}: {n} kernels started; settling")
            await asyncio.sleep(3.0)
            gc.collect()
            c0, w0 = me.cpu_times(), time.monotonic()
            left = idle_s
            while left > 0:  # idle, but the parent hears from us
                await asyncio.sleep(min(5.0, left))
                alive(f"{lib}: {n} idle kernels, measuring CPU")
                left = idle_s - (time.monotonic() - w0)
            c1, wall = me.cpu_times(), time.monotonic() - w0
            snap = _snapshot()
            cpu = (c1.user - c0.user) + (c1.system - c0.system)
            more = n - first[0]
            return {
                **snap,
                "rss_kib_per_kernel": (snap["rss_mib"] - first[1]) * 1024 / more if more else 0.0,
                "cpu_pct": 100.0 * cpu / wall,
                "cpu_s": cpu,
                "idle_s": wall,
                "start_s": start_s,
                "kernels": len(mkm.list_kernel_ids()),
                "errors": errors,
                "threads_names": sorted(t.name for t in threading.enumerate()),
            }
        finally:
            emit("alive", step=f"{lib}: stopping {n} kernels", deadline_s=STOP_DEADLINE + n)
            await _mkm_close(lib, mkm)

    return asyncio.run(run())


# -- running a child and killing it -------------------------------------------

CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # running children (killed on the way out)


@dataclass
class ChildRun:
    """What a child sent before it exited or was killed."""

    args: list[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    killed: str | None = None  # why the parent killed it; None: it exited by itself
    returncode: int | None = None
    stderr: str = ""
    killed_procs: int = 0  # the child and every process it had started
    removed_files: list[str] = field(default_factory=list)  # its connection files

    def first(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["kind"] == kind), None)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]

    @property
    def result(self) -> dict[str, Any] | None:
        ev = self.first("result")
        return None if ev is None else ev["data"]  # type: ignore[no-any-return]

    def why(self) -> str:
        """Why there is no result: the kill reason, or the child's exit status."""
        if self.killed:
            return self.killed
        tail = [ln for ln in self.stderr.strip().splitlines() if ln.strip()][-1:]
        return f"child exited with status {self.returncode}" + (f": {tail[0]}" if tail else "")

    def summary(self) -> dict[str, Any]:
        if not self.killed:
            return {}
        return {
            "killed": self.killed,
            "killed_procs": self.killed_procs,
            "removed_connection_files": self.removed_files,
        }


def run_child(args: list[str], timeout: float, idle: float = CHILD_IDLE_TIMEOUT) -> ChildRun:
    """Run this script as a child (``--child ...``) and collect its events.

    The parent never blocks on the child for long: it kills the child, every
    process the child started (its kernels included) and removes the connection
    files created meanwhile if the child sends no event for ``idle`` seconds,
    overruns a deadline it announced (``deadline_s``), or overruns ``timeout``.
    Events go through a pipe of their own (``--event-fd``), which the kernels do
    not inherit, so its end of file means the child has exited.
    """
    files_before = set(_conn_files())
    run = ChildRun(args)
    r, w = os.pipe()
    err = tempfile.TemporaryFile()
    cmd = [sys.executable, os.path.abspath(__file__), *args, "--event-fd", str(w)]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            pass_fds=(w,),
            start_new_session=True,
        )
    except BaseException:
        os.close(r)
        err.close()
        raise
    finally:
        os.close(w)
    CHILDREN[proc.pid] = proc
    start = time.monotonic()
    hard_end, idle_end, phase_end, phase_s = start + timeout, start + idle, math.inf, 0.0
    step = "starting"
    buf = b""
    try:
        while True:
            now = time.monotonic()
            end, reason = min(
                (hard_end, f"over its {timeout:.0f} s budget"),
                (idle_end, f"no progress for {idle:.0f} s"),
                (phase_end, f"{phase_s:.0f} s deadline passed"),
                key=lambda x: x[0],
            )
            if now >= end:
                run.killed = f"killed ({reason}) during {step!r}"
                break
            if not select.select([r], [], [], end - now)[0]:
                continue
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break  # the child has exited
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                run.events.append(ev)
                now = time.monotonic()
                idle_end = now + idle
                if "deadline_s" in ev:
                    phase_s = ev["deadline_s"] or 0.0
                    phase_end = math.inf if ev["deadline_s"] is None else now + phase_s
                step = ev.get("step") or step
                if ev["kind"] == "progress":
                    progress("  " + ev["msg"])
                elif ev["kind"] == "warning":
                    warn(ev["msg"])
        if not run.killed:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.killed = "killed (did not exit after closing its event pipe)"
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): take the child down too
        run.killed = "killed (the benchmark was interrupted)"
        raise
    finally:
        os.close(r)
        if run.killed:
            run.killed_procs = kill_tree(proc.pid)
            for path in sorted(set(_conn_files()) - files_before):
                with contextlib.suppress(OSError):
                    os.remove(path)
                    run.removed_files.append(os.path.basename(path))
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        CHILDREN.pop(proc.pid, None)
        run.returncode = proc.returncode
        err.seek(0)
        run.stderr = err.read().decode(errors="replace")[-4000:]
        err.close()
    return run


def kill_tree(pid: int) -> int:
    """SIGKILL a process we started and everything it started; returns how many.

    The descendants are listed before anything is killed: once the root is gone
    they would be re-parented and no longer found as its children.
    """
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return 0
    for pr in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            pr.kill()
    psutil.wait_procs(procs[:-1], timeout=5)  # the root is reaped by its Popen
    return len(procs)


def child_result(run: ChildRun, what: str) -> dict[str, Any]:
    """The child's result, or an exception saying why there is none."""
    if run.result is not None:
        return run.result
    cleaned = (
        f"; {run.killed_procs} processes killed, {len(run.removed_files)} connection files removed"
        if run.killed
        else ""
    )
    raise RuntimeError(f"{what}: {run.why()}{cleaned}\n{run.stderr[-1500:]}")


def bench_in_child(workload: str, p: Params, want: set[str], timeout: float) -> list[Row]:
    """Run one of the single-kernel workloads in a fresh child (after a warm-up there)."""
    run = run_child(
        [
            "--child",
            "workload",
            "--workload",
            workload,
            "--params",
            json.dumps(asdict(p)),
            "--want",
            ",".join(sorted(want)),
        ],
        timeout,
    )
    return [Row(**d) for d in child_result(run, workload)["rows"]]


def child_workload(workload: str, p: Params, want: set[str]) -> dict[str, Any]:
    warm_up()
    if workload == "lifecycle":
        rows = bench_lifecycle(p, "start" in want, "shutdown" in want)
    elif workload == "restart":
        rows = bench_restart(p)
    elif workload == "roundtrip":
        rows = bench_roundtrip(p)
    elif workload == "interrupt":
        rows = bench_interrupt(p)
    else:
        raise ValueError(f"no child workload {workload!r}")
    return {"rows": [asdict(r) for r in rows]}


def bench_resources(p: Params) -> list[Row]:
    """(7) threads, fds and RSS of the manager process with 0 and N kernels + clients."""
    n = p.resource_kernels
    progress(f"resources: {n} kernels + clients, one fresh child process per library")
    res = {}
    for lib in LIBS:
        run = run_child(
            ["--child", "resources", "--lib", lib, "--kernels", str(n)], 120 + (n + 1) * 10
        )
        res[lib] = child_result(run, f"resources ({lib})")

    def row(key: str, snap: str, label: str, unit: str, target: str = "—", rule: str = "") -> Row:
        return Row(
            "resources", label, unit, [res["kk"][snap][key]], [res["jc"][snap][key]], target, rule
        )

    rows = [
        row("threads", "idle", "threads, 0 kernels (after one start/stop)", "count"),
        row("threads", "busy", f"threads, {n} kernels + clients", "count", "kk ≤ 4", "kk<=4"),
        row("fds", "idle", "fds, 0 kernels", "count"),
        row("fds", "busy", f"fds, {n} kernels + clients", "count", "≤ 0.6", "ratio<=0.6"),
        row("rss_mib", "idle", "RSS, 0 kernels", "MiB"),
        row("rss_mib", "busy", f"RSS, {n} kernels + clients", "MiB"),
    ]
    rows[1].extra["thread_names"] = {lib: res[lib]["busy"].get("threads_names") for lib in LIBS}
    for r in rows:
        r.extra["raw"] = res
    return rows


def _cycles_result(lib: str, run: ChildRun) -> dict[str, Any]:
    """The cycles child's result; if it was killed, what its events had reported."""
    if run.result is not None:
        return {**run.result, "killed": None}
    before = run.first("before")
    if before is None:
        child_result(run, f"cycles ({lib})")  # raises: nothing was measured
    cycles = run.all("cycle")
    errors = [e["error"] for e in cycles if "error" in e]
    errors.append(f"cycle {len(cycles) + 1}: {run.why()}")
    warn(f"cycles ({lib}): {run.why()}; {len(cycles)} cycles done")
    return {
        "before": before["snapshot"],  # type: ignore[index]
        "after": None,
        "times": [e["ms"] for e in cycles if "ms" in e],
        "errors": errors,
        "killed": run.why(),
        "done": len(cycles),
        **run.summary(),
    }


def bench_cycles(p: Params) -> list[Row]:
    """(9) start/stop cycles in a fresh child per library; time and resource growth."""
    progress(f"cycles: {p.cycles} start/stop cycles, one fresh child process per library")
    res = {}
    for lib in LIBS:
        run = run_child(
            [
                "--child",
                "cycles",
                "--lib",
                lib,
                "--cycles",
                str(p.cycles),
                "--warmup",
                str(p.cycle_warmup),
            ],
            120 + (p.cycles + p.cycle_warmup) * 10,
        )
        res[lib] = _cycles_result(lib, run)

    def growth(lib: str, key: str) -> float | None:
        if res[lib]["after"] is None:
            return None
        return float(res[lib]["after"][key] - res[lib]["before"][key])

    def text(lib: str, key: str, unit: str) -> str:
        if res[lib]["after"] is None:
            return "— (run killed)"
        b, a = res[lib]["before"][key], res[lib]["after"][key]
        return (
            f"{fmt_num(b, unit)} → {fmt_num(a, unit)} ({a - b:+.1f})"
            if unit == "MiB"
            else (f"{b:.0f} → {a:.0f} ({a - b:+.0f})")
        )

    def samples(lib: str, key: str) -> list[float] | None:
        g = growth(lib, key)
        return None if g is None else [g]

    def failed(lib: str) -> str:
        t = f"{len(res[lib]['errors'])} of {p.cycles}"
        if res[lib]["killed"]:
            t += f" (run killed in cycle {res[lib]['done'] + 1}: it hung)"
        return t

    rows = [
        Row(
            "cycles",
            f"start/stop cycle ({p.cycles} cycles, graceful stop)",
            "ms",
            res["kk"]["times"],
            res["jc"]["times"],
        ),
        Row(
            "cycles",
            f"failed starts in {p.cycles} cycles",
            "count",
            [len(res["kk"]["errors"])],
            [len(res["jc"]["errors"])],
            kk_text=failed("kk"),
            jc_text=failed("jc"),
            show_ratio=False,
            extra={lib: res[lib]["errors"] for lib in LIBS},
        ),
    ]
    for key, label, unit in (("fds", "fds", "count"), ("threads", "threads", "count")):
        rows.append(
            Row(
                "cycles",
                f"{label} before → after {p.cycles} cycles",
                unit,
                samples("kk", key),
                samples("jc", key),
                "kk: no growth",
                "kk<=0",
                kk_text=text("kk", key, unit),
                jc_text=text("jc", key, unit),
                show_ratio=False,
            )
        )
    rows.append(
        Row(
            "cycles",
            f"RSS before → after {p.cycles} cycles (MiB)",
            "MiB",
            samples("kk", "rss_mib"),
            samples("jc", "rss_mib"),
            "kk: growth < 5 MiB",
            "kk<5",
            kk_text=text("kk", "rss_mib", "MiB"),
            jc_text=text("jc", "rss_mib", "MiB"),
            show_ratio=False,
        )
    )
    for r in rows[2:]:
        if res["kk"]["killed"]:
            r.met_override = False  # kernelkeeper's own run did not finish
        r.extra["before_after"] = {
            lib: {k: res[lib][k] for k in ("before", "after")} for lib in LIBS
        }
    for r in rows:
        r.extra["killed"] = {lib: res[lib]["killed"] for lib in LIBS}
    return rows


def bench_pool(p: Params) -> list[Row]:
    """(8) start → client ready on a warm-pool hit through kernelkeeper's multi-kernel
    manager, beside a cold start through jupyter_client's (it has no pools)."""
    progress(f"pool: {p.repeat} pool hits (kk) and cold starts (jc) via AsyncMultiKernelManager")
    run = run_child(["--child", "pool", "--repeat", str(p.repeat)], 120 + p.repeat * 40)
    res = child_result(run, "pool")
    misses = res["misses"]
    row = Row(
        "pool",
        "start_kernel → client ready via AsyncMultiKernelManager: kk warm-pool hit, jc cold start",
        "ms",
        res["times"]["kk"],
        res["times"]["jc"],
        "kk ≤ 5 ms",
        "kk<=5",
        kk_note=f"{misses} of {p.repeat} missed the pool" if misses else "",
        extra={"take_ms": res["take_ms"], "misses": misses},
    )
    if misses:
        row.met_override = False
    return [row]


def bench_multi(p: Params) -> list[Row]:
    """(10) N kernels started at once through one multi-kernel manager until all are
    ready; the same trial machinery as (4), one fresh child per trial."""
    n = p.multi_size
    progress(f"multi: {n} at once via AsyncMultiKernelManager x {p.multi_rounds} rounds x 2")
    trials: dict[str, list[dict[str, Any]]] = {lib: [] for lib in LIBS}
    for _i, order in orders(p.multi_rounds):
        for lib in order:
            progress(f"  {lib}: {n} at once via AsyncMultiKernelManager")
            trials[lib].append(_concurrent_trial(lib, n, api="mkm"))
    walls = {lib: [t["wall_ms"] for t in trials[lib] if t["wall_ms"] is not None] for lib in LIBS}
    cut = {lib: [t for t in trials[lib] if t["censored"]] for lib in LIBS}
    notes = {
        lib: f"{len(cut[lib])} more trial(s) not in the figures" if cut[lib] else "" for lib in LIBS
    }
    wall = Row(
        "multi",
        f"{n} kernels at once via AsyncMultiKernelManager → all ready (wall)",
        "ms",
        walls["kk"],
        walls["jc"],
        "≤ 0.9",
        "ratio<=0.9",
        kk_note=notes["kk"],
        jc_note=notes["jc"],
        extra={"trials": trials},
    )
    if cut["kk"]:
        wall.met_override = False  # kernelkeeper itself did not finish a trial
    total = n * p.multi_rounds
    fails = {lib: [e for t in trials[lib] for e in t["errors"]] for lib in LIBS}
    failed = Row(
        "multi",
        f"{n} kernels at once via AsyncMultiKernelManager: failed starts",
        "count",
        [len(fails["kk"])],
        [len(fails["jc"])],
        "kk 0",
        "kk<=0",
        kk_text=f"{len(fails['kk'])} of {total}",
        jc_text=f"{len(fails['jc'])} of {total}",
        show_ratio=False,
        extra={"kk_errors": fails["kk"], "jc_errors": fails["jc"]},
    )
    return [wall, failed]


def bench_idle(p: Params) -> list[Row]:
    """(11) many idle kernels under one multi-kernel manager: its threads, RSS and CPU."""
    n, secs = p.idle_kernels, p.idle_seconds
    progress(f"idle: {n} kernels under one AsyncMultiKernelManager, {secs:.0f} s idle, per library")
    res = {}
    for lib in LIBS:
        run = run_child(
            [
                "--child",
                "idle",
                "--lib",
                lib,
                "--kernels",
                str(n),
                "--batch",
                str(p.idle_batch),
                "--seconds",
                str(secs),
            ],
            180 + n * 5 + secs,
        )
        res[lib] = child_result(run, f"idle ({lib})")
        if res[lib]["errors"]:
            warn(f"idle ({lib}): {len(res[lib]['errors'])} of {n} starts failed")

    def row(key: str, label: str, unit: str, target: str = "—", rule: str = "") -> Row:
        return Row("idle", label, unit, [res["kk"][key]], [res["jc"][key]], target, rule)

    where = f"{n} idle kernels, one AsyncMultiKernelManager"
    rows = [
        row("threads", f"manager threads, {where}", "count", "kk ≤ 4", "kk<=4"),
        row("rss_mib", f"manager RSS, {where}", "MiB", "≤ 0.6", "ratio<=0.6"),
        row(
            "rss_kib_per_kernel",
            f"manager RSS per kernel after the first batch, {where}",
            "KiB",
        ),
        row("fds", f"manager fds, {where}", "count"),
        row(
            "cpu_pct",
            f"manager CPU over {secs:.0f} s idle, {where} (% of one core)",
            "%",
            "kk < 1 %",
            "kk<1",
        ),
    ]
    starts = {lib: len(res[lib]["errors"]) for lib in LIBS}
    rows.append(
        Row(
            "idle",
            f"failed starts of {n} (batches of {p.idle_batch})",
            "count",
            [starts["kk"]],
            [starts["jc"]],
            "kk 0",
            "kk<=0",
            show_ratio=False,
        )
    )
    for r in rows:
        r.extra["raw"] = res
        if res["kk"]["kernels"] != n - starts["kk"]:
            r.met_override = False  # kernels went missing under the manager
    return rows


# -----------------------------------------------------------------------------
# Main
# -----------------------------------------------------------------------------


def leftovers(base: str) -> tuple[list[int], list[str]]:
    """Kernel processes still alive and connection files still present.

    Processes: our descendants, plus any process whose command line names a file
    in our private dir (a kernel re-parented after its manager died).
    """
    me = psutil.Process()
    found = {pr.pid: pr for pr in me.children(recursive=True)}
    for pr in psutil.process_iter(["cmdline"]):
        if pr.pid != me.pid and _conn_file_arg(pr.info["cmdline"] or (), base):
            found.setdefault(pr.pid, pr)
    _, still = psutil.wait_procs(list(found.values()), timeout=5)
    procs = []
    for pr in still:
        with contextlib.suppress(psutil.Error):
            if pr.status() != psutil.STATUS_ZOMBIE:
                procs.append(pr.pid)
    return procs, [os.path.relpath(f, base) for f in _conn_files()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small run (under a minute)")
    ap.add_argument(
        "--only",
        default="",
        metavar="WORKLOAD[,WORKLOAD]",
        help=f"run only these workloads: {','.join(WORKLOADS)}",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="N",
        help="timed repetitions per lifecycle figure and library (default 8, quick 2)",
    )
    ap.add_argument(
        "--calls",
        type=int,
        default=None,
        metavar="N",
        help="round trips per message type and library (default 200, quick 50)",
    )
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the raw numbers here")
    # internal: run a workload (or one trial) in a fresh process; see run_child
    ap.add_argument(
        "--child",
        choices=("workload", "concurrent", "resources", "cycles", "pool", "idle"),
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--event-fd", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workload", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--params", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--want", default="", help=argparse.SUPPRESS)
    ap.add_argument("--lib", choices=LIBS, help=argparse.SUPPRESS)
    ap.add_argument("--kernels", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--cycles", type=int, default=200, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=5, help=argparse.SUPPRESS)
    ap.add_argument("--api", choices=("new", "mkm"), default="new", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=20.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    bad = [w for w in only if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {', '.join(WORKLOADS)}")
    args.workloads = only or list(WORKLOADS)
    return args


def _sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def child_main(args: argparse.Namespace) -> int:
    global EVENT_FD
    if args.event_fd is not None:
        os.set_inheritable(args.event_fd, False)  # no kernel may hold the pipe open
        EVENT_FD = args.event_fd
    try:
        if args.child == "workload":
            d = json.loads(args.params)
            d["concurrent_sizes"] = tuple(d["concurrent_sizes"])
            want = {w for w in args.want.split(",") if w}
            result = child_workload(args.workload, Params(**d), want)
        elif args.child == "concurrent":
            result = child_concurrent(args.lib, args.kernels, args.api)
        elif args.child == "pool":
            result = child_pool(args.repeat or 2)
        elif args.child == "idle":
            result = child_idle(args.lib, args.kernels, args.batch, args.seconds)
        elif args.child == "resources":
            result = child_resources(args.lib, args.kernels)
        else:
            result = child_cycles(args.lib, args.cycles, args.warmup)
    finally:
        LIVE.close_all()
    emit("result", data=result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    if args.child:
        return child_main(args)

    compile_package()
    p = Params.make(args.quick, args.repeat, args.calls)
    # A private directory: JUPYTER_RUNTIME_DIR and TMPDIR of every child (and so
    # of every kernel) point into it, so the connection files of both libraries
    # land there; the cleanup after a killed child and the leftover check at the
    # end look there (and for processes whose command line names it).
    base = tempfile.mkdtemp(prefix="kkbench-")
    for sub in ("runtime", "tmp"):
        os.mkdir(os.path.join(base, sub))
    os.environ[BASE_ENV] = base
    os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(base, "runtime")
    os.environ["TMPDIR"] = os.path.join(base, "tmp")

    info = machine_info()
    print("## Machine\n")
    cores = f"{info['cores_logical']} logical / {info['cores_physical']} physical"
    if info.get("cpu_affinity") not in (None, info["cores_logical"]):
        cores += f" ({info['cpu_affinity']} usable)"
    print(f"- cores: {cores}; RAM: {info['ram_gib']} GiB; {info['platform']}")
    print(
        f"- python {info['python']}; kernelkeeper {info['kernelkeeper']} "
        f"(commit {info['kernelkeeper_source']['commit']}, "
        f"source {info['kernelkeeper_source']['digest']}); "
        f"jupyter_client {info['jupyter_client']}; ipykernel {info['ipykernel']}; "
        f"pyzmq {info['pyzmq']} (libzmq {info['libzmq']})"
    )
    mode = "quick" if p.quick else "full"
    print(
        f"- mode: {mode}; repeat {p.repeat}; round trips {p.calls}; "
        f"concurrent sizes {list(p.concurrent_sizes)} x {p.concurrent_rounds}; "
        f"resources with {p.resource_kernels} kernels; {p.cycles} cycles; "
        f"kernel spec {KERNEL!r}; workloads: {','.join(args.workloads)}"
    )
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"- load average at the start (1/5/15 min): {load} "
        "(every figure is wall time: run on an otherwise idle machine)\n",
        flush=True,
    )

    t_start = time.perf_counter()
    rows: list[Row] = []
    errors: list[str] = []
    want = set(args.workloads)
    steps: list[tuple[str, Callable[[], list[Row]]]] = []
    # Workload budgets are backstops; a child is killed much earlier if it stops
    # making progress (CHILD_IDLE_TIMEOUT without an event).
    if want & {"start", "shutdown"}:
        steps.append(
            ("start/shutdown", lambda: bench_in_child("lifecycle", p, want, 120 + p.repeat * 40))
        )
    if "restart" in want:
        steps.append(("restart", lambda: bench_in_child("restart", p, want, 120 + p.repeat * 40)))
    if "concurrent" in want:
        steps.append(("concurrent", lambda: bench_concurrent(p)))
    if "roundtrip" in want:
        steps.append(("roundtrip", lambda: bench_in_child("roundtrip", p, want, 120 + p.calls)))
    if "interrupt" in want:
        steps.append(
            ("interrupt", lambda: bench_in_child("interrupt", p, want, 120 + p.repeat * 20))
        )
    if "resources" in want:
        steps.append(("resources", lambda: bench_resources(p)))
    if "pool" in want:
        steps.append(("pool", lambda: bench_pool(p)))
    if "multi" in want:
        steps.append(("multi", lambda: bench_multi(p)))
    if "idle" in want:
        steps.append(("idle", lambda: bench_idle(p)))
    if "cycles" in want:
        steps.append(("cycles", lambda: bench_cycles(p)))

    try:
        for name, step in steps:
            t0 = time.perf_counter()
            try:
                rows.extend(step())
            except Exception as e:  # report and go on with the other workloads
                errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0]}")
                warn(f"workload {name} failed: {type(e).__name__}: {e}")
            progress(f"{name} done in {time.perf_counter() - t0:.1f} s")
    finally:
        for child in list(CHILDREN.values()):  # only if we are being interrupted
            kill_tree(child.pid)
        procs, files = leftovers(base)
        for pid in procs:
            kill_tree(pid)
        shutil.rmtree(base, ignore_errors=True)

    elapsed = time.perf_counter() - t_start
    src_end = kk_source()
    if src_end["digest"] != info["kernelkeeper_source"]["digest"]:
        errors.append(
            f"kernelkeeper's source changed during the run (source "
            f"{info['kernelkeeper_source']['digest']} -> {src_end['digest']}, "
            f"commit {src_end['commit']} at the end): the figures mix two versions"
        )
    print("## Results (kk = kernelkeeper, jc = jupyter_client; times in ms)\n")
    print(render_table(rows))
    print()
    missed = [r.label for r in rows if r.met() is False]
    print(f"- targets missed: {len(missed)}" + (f" ({'; '.join(missed)})" if missed else ""))
    for err in errors:
        print(f"- ERROR in workload {err}")
    print(f"- leftovers: {len(procs)} kernel processes, {len(files)} connection files")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"- wall time: {elapsed:.1f} s; load average at the end (1/5/15 min): {load}", flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "params": asdict(p),
                    "workloads": args.workloads,
                    "elapsed_s": elapsed,
                    "errors": errors,
                    "leftovers": {"processes": procs, "files": files},
                    "rows": [
                        {
                            **asdict(r),
                            "ratio": r.ratio(),
                            "met": r.met(),
                            "kk_median": r.median("kk"),
                            "jc_median": r.median("jc"),
                        }
                        for r in rows
                    ],
                },
                f,
                indent=1,
                default=str,
            )
    return 1 if errors or procs or files else 0


if __name__ == "__main__":
    sys.exit(main())

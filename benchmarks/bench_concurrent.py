"""N kernels started at once: one trial per child, through either API.

(4) ``concurrent``: one manager per kernel (``async_start_new_kernel`` /
``AsyncKernelManager``); (10) ``multi``: one ``AsyncMultiKernelManager`` for
all. A trial that overruns its deadline is killed by the parent; it is censored
(no wall time) and every kernel not ready by then counts as a failed start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench_child import BASE_ENV, conn_file_arg, conn_files, run_child
from bench_common import (
    CHILD_IDLE_TIMEOUT,
    KERNEL,
    LIBS,
    STARTUP_TIMEOUT,
    STOP_DEADLINE,
    TRIAL_DEADLINE,
    Params,
    Row,
    alive,
    emit,
    errtext,
    ms,
    orders,
    progress,
    warn,
)
from bench_kernels import mkm_close, mkm_for


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
            emit("failed", error=errtext(e))

    def on_started(self, wall: float, errors: list[BaseException]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.report:
            emit(
                "started",
                wall_ms=ms(wall),
                errors=[errtext(e) for e in errors],
                step="stopping the trial's kernels",
                deadline_s=STOP_DEADLINE,
            )

    async def start_all(
        self, n: int, start: Callable[[], Awaitable[tuple[Any, Any]]]
    ) -> tuple[float, list[tuple[Any, Any]], list[BaseException]]:
        """``start()`` n times at once (``asyncio.gather``), each returning the
        ready kernel's manager and one more thing; the wall time, the results of
        the starts that succeeded and the errors of the others."""

        async def one() -> tuple[Any, Any]:
            try:
                km, other = await start()
            except BaseException as e:
                self.on_failed(e)
                raise
            self.on_ready(km)
            return km, other

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        wall = time.perf_counter() - t0
        ok = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        self.on_started(wall, errors)
        return wall, ok, errors


def _warn_stop_failures(lib: str, stopped: list[Any]) -> None:
    for e in stopped:
        if isinstance(e, BaseException):
            warn(f"{lib}: shutdown after concurrent start failed: {e!r}")


async def _kk_many(n: int, hooks: Hooks) -> tuple[float, list[BaseException]]:
    """N starts at once with kernelkeeper's ``async_start_new_kernel``."""
    import kernelkeeper

    async def one() -> tuple[Any, Any]:
        return await kernelkeeper.async_start_new_kernel(
            startup_timeout=STARTUP_TIMEOUT, kernel_name=KERNEL, stderr=subprocess.DEVNULL
        )

    wall, ok, errors = await hooks.start_all(n, one)

    async def stop(km: Any, kc: Any) -> None:
        try:
            await kc.aclose()
        finally:
            await km.shutdown_kernel(now=True)

    stopped = await asyncio.gather(*(stop(km, kc) for km, kc in ok), return_exceptions=True)
    _warn_stop_failures("kk", stopped)
    return wall, errors


async def _jc_many(n: int, hooks: Hooks) -> tuple[float, list[BaseException]]:
    """N starts at once with jupyter_client's ``AsyncKernelManager`` and a client each."""
    from jupyter_client.manager import AsyncKernelManager

    kms: list[Any] = []  # every manager, started or not: the finally stops their kernels
    kcs: list[Any] = []

    async def one() -> tuple[Any, Any]:
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
        return km, kc

    try:
        wall, _ok, errors = await hooks.start_all(n, one)
    finally:
        for kc in kcs:
            with contextlib.suppress(Exception):
                kc.stop_channels()
        stopped = await asyncio.gather(
            *(km.shutdown_kernel(now=True) for km in kms if km.has_kernel), return_exceptions=True
        )
        _warn_stop_failures("jc", stopped)
    return wall, errors


async def _mkm_many(lib: str, n: int, hooks: Hooks) -> tuple[float, list[BaseException]]:
    """N starts at once (``asyncio.gather``) through one multi-kernel manager."""
    mkm, start = mkm_for(lib)

    async def one() -> tuple[Any, Any]:
        kid = await start(mkm)
        return mkm.get_kernel(kid), kid

    try:
        wall, _ok, errors = await hooks.start_all(n, one)
    finally:
        await mkm_close(lib, mkm)
    return wall, errors


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
                cf = conn_file_arg(pr.cmdline(), base)
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
        for name in conn_files():
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
    many: Callable[[int, Hooks], Awaitable[tuple[float, list[BaseException]]]]
    if api == "mkm":
        many = functools.partial(_mkm_many, lib)
    else:
        many = _kk_many if lib == "kk" else _jc_many

    async def run() -> dict[str, Any]:
        alive(f"{lib}: warm-up start/stop (untimed)")
        _wall, errors = await many(1, Hooks())
        if errors:
            raise RuntimeError(f"warm-up start failed: {errtext(errors[0])}")
        hooks = Hooks(report=True)
        hooks.timer = threading.Timer(
            TRIAL_DEADLINE - 5, _diagnose, args=(hooks, threading.get_ident())
        )
        hooks.timer.daemon = True
        emit("t0", step=f"{lib}: {n} kernels at once", deadline_s=TRIAL_DEADLINE)
        hooks.timer.start()
        wall, errors = await many(n, hooks)
        return {"wall_ms": ms(wall), "errors": [errtext(e) for e in errors]}

    return asyncio.run(run())


def concurrent_trial(lib: str, n: int, api: str = "new") -> dict[str, Any]:
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


def _tally(
    trials: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, list[float]], dict[str, list[dict[str, Any]]], dict[str, list[str]]]:
    """Per library: the wall times of the trials whose starts all finished, the
    censored trials, and every failed start."""
    walls = {lib: [t["wall_ms"] for t in trials[lib] if t["wall_ms"] is not None] for lib in LIBS}
    cut = {lib: [t for t in trials[lib] if t["censored"]] for lib in LIBS}
    fails = {lib: [e for t in trials[lib] for e in t["errors"]] for lib in LIBS}
    return walls, cut, fails


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
                trials[(lib, n)].append(concurrent_trial(lib, n))
    rows: list[Row] = []
    for n in p.concurrent_sizes:
        target, rule = ("≤ 0.9", "ratio<=0.9") if n == 32 else ("—", "")
        of_n = {lib: trials[(lib, n)] for lib in LIBS}
        walls, cut, fails = _tally(of_n)
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
            extra={"trials": of_n},
        )
        if rule and cut["kk"]:
            row.met_override = False  # kernelkeeper itself did not finish a trial
        rows.append(row)
        total = n * p.concurrent_rounds
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


def bench_multi(p: Params) -> list[Row]:
    """(10) N kernels started at once through one multi-kernel manager until all are
    ready; the same trial machinery as (4), one fresh child per trial."""
    n = p.multi_size
    progress(f"multi: {n} at once via AsyncMultiKernelManager x {p.multi_rounds} rounds x 2")
    trials: dict[str, list[dict[str, Any]]] = {lib: [] for lib in LIBS}
    for _i, order in orders(p.multi_rounds):
        for lib in order:
            progress(f"  {lib}: {n} at once via AsyncMultiKernelManager")
            trials[lib].append(concurrent_trial(lib, n, api="mkm"))
    walls, cut, fails = _tally(trials)
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

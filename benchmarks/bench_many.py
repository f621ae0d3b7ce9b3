"""Many kernels, one fresh child per library: resources, pool, idle, cycles.

(7) threads, fds and RSS with 0 and N kernels; (8) a warm-pool hit; (11) many
idle kernels under one multi-kernel manager; (9) start/stop cycles and what
they leave behind. Each ``child_*`` runs in a child of bench.py and each
``bench_*`` runs those children from the parent and builds the rows.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import threading
import time
from typing import Any

import psutil

from bench_child import ChildRun, child_result, run_child
from bench_common import (
    KERNEL,
    LIBS,
    STARTUP_TIMEOUT,
    STOP_DEADLINE,
    Params,
    Row,
    alive,
    emit,
    errtext,
    fmt_num,
    ms,
    orders,
    progress,
    warn,
)
from bench_kernels import jc_mkm, jc_mkm_start, mkm_close, mkm_for, start_kernel, stop_kernel

# -- child processes: resources (7) and cycles (9) ------------------------------


def _snapshot() -> dict[str, float]:
    """This process's threads, fds and RSS (MiB), after a garbage collection."""
    gc.collect()
    me = psutil.Process()
    return {
        "threads": me.num_threads(),
        "fds": me.num_fds() if hasattr(me, "num_fds") else float("nan"),
        "rss_mib": me.memory_info().rss / 2**20,
    }


def child_resources(lib: str, n: int) -> dict[str, Any]:
    """Threads, fds and RSS after one start/stop, with ``n`` kernels + clients, and after."""
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
            errors.append(errtext(e))
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
        jmkm = jc_mkm()
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
                kid = await jc_mkm_start(jmkm)
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
            await mkm_close("kk", kmkm)
            await mkm_close("jc", jmkm)
        return {"times": times, "misses": misses, "take_ms": take_ms}

    return asyncio.run(run())


def child_idle(lib: str, n: int, batch: int, idle_s: float) -> dict[str, Any]:
    """``n`` kernels under one multi-kernel manager (autorestart on, as a notebook
    server runs them), started ``batch`` at a time; then the manager process's
    threads, fds and RSS, and its CPU time (user + system, kernels not included)
    over ``idle_s`` seconds in which nothing is asked of the kernels."""

    async def run() -> dict[str, Any]:
        me = psutil.Process()
        mkm, start = mkm_for(lib)
        errors: list[str] = []
        try:
            t0 = time.perf_counter()
            done = 0
            while done < n:
                k = min(batch, n - done)
                alive(f"{lib}: starting kernels {done + 1}-{done + k} of {n}")
                got = await asyncio.gather(*(start(mkm) for _ in range(k)), return_exceptions=True)
                errors += [errtext(e) for e in got if isinstance(e, BaseException)]
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
            await mkm_close(lib, mkm)

    return asyncio.run(run())


# -- in the parent: the children above, one per library, and the rows -----------


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

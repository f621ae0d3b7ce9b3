#!/usr/bin/env python
"""Start and restart with the fork server, side by side with a normal spawn and jupyter_client.

Run from the repository root with the project's virtualenv::

    .venv/bin/python benchmarks/bench_forkserver.py            # 10 repetitions
    .venv/bin/python benchmarks/bench_forkserver.py --repeat 20 --json out.json

Three ways to start the same installed ``python3`` kernelspec, alternating
in each repetition (the order rotates, so drift in the machine's load
spreads evenly):

* ``jc``: jupyter_client's blocking ``start_new_kernel`` / ``KernelManager``;
* ``kk``: kernelkeeper's ``start_new_kernel``, a normal spawn
  (``KERNELKEEPER_FORKSERVER=0``);
* ``kk-fork``: the same with the fork server on (``=1``), its template
  warm (started by an untimed warm-up).

Rows: start → ready (``start_new_kernel`` returns a client that has had its
``kernel_info`` reply), restart ``now=True`` → ready, the first start in
a fresh process whose template is cold (for honesty: it includes starting
the template; measured in child processes, from after ``import
kernelkeeper`` to ready), and ``--many`` kernels (32) started at once on one
event loop by each way's async manager: the wall time until all are ready,
and the CPU time per started kernel (the kernels' own up to ready, plus the
managing process's and, for the fork server, the template's over the same
span). It prints one markdown table: min / median / max per way and the
ratios of the medians to jupyter_client's. Every kernel is shut down in a
``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from compiled import compile_package

KERNEL = "python3"
TIMEOUT = 60.0
WAYS = ("jc", "kk", "kk-fork")

COLD = """
import os, subprocess, sys, time
os.environ["KERNELKEEPER_FORKSERVER"] = sys.argv[1]
import kernelkeeper
from kernelkeeper import forkserver
t0 = time.perf_counter()
km, kc = kernelkeeper.start_new_kernel(
    kernel_name=sys.argv[2], startup_timeout=float(sys.argv[3]), stderr=subprocess.DEVNULL
)
dt = time.perf_counter() - t0
kc.stop_channels()
km.shutdown_kernel(now=True)
forkserver.shutdown_templates()
print(dt)
"""


def _switch(way: str) -> None:
    if way != "jc":
        os.environ["KERNELKEEPER_FORKSERVER"] = "1" if way == "kk-fork" else "0"


def start(way: str) -> tuple[Any, Any]:
    """A blocking start to ready: (km, kc)."""
    _switch(way)
    if way == "jc":
        from jupyter_client.manager import start_new_kernel

        jc: tuple[Any, Any] = start_new_kernel(
            startup_timeout=TIMEOUT, kernel_name=KERNEL, stderr=subprocess.DEVNULL
        )
        return jc
    import kernelkeeper

    kk: tuple[Any, Any] = kernelkeeper.start_new_kernel(
        startup_timeout=TIMEOUT, kernel_name=KERNEL, stderr=subprocess.DEVNULL
    )
    return kk


def stop(km: Any, kc: Any) -> None:
    try:
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)


def _drain(kc: Any) -> None:
    # jupyter_client's wait_for_ready takes any kernel_info_reply: a leftover one
    # would end the wait before the new kernel is up.
    for get in (kc.get_shell_msg, kc.get_iopub_msg):
        with contextlib.suppress(Exception):
            while True:
                get(timeout=0.01)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def bench_start(n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {w: [] for w in WAYS}
    for i in range(n):
        for way in WAYS[i % 3 :] + WAYS[: i % 3]:
            t0 = time.perf_counter()
            km, kc = start(way)
            out[way].append((time.perf_counter() - t0) * 1000)
            stop(km, kc)
    return out


def bench_restart(n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {w: [] for w in WAYS}
    kernels = {}
    try:
        for way in WAYS:
            kernels[way] = start(way)
        for i in range(n + 1):  # the first round is a warm-up
            for way in WAYS[i % 3 :] + WAYS[: i % 3]:
                km, kc = kernels[way]
                _switch(way)
                _drain(kc)

                def restart(km: Any = km, kc: Any = kc) -> None:
                    km.restart_kernel(now=True)
                    kc.wait_for_ready(timeout=TIMEOUT)

                dt = timed(restart)
                if i:
                    out[way].append(dt)
    finally:
        for km, kc in kernels.values():
            with contextlib.suppress(Exception):
                stop(km, kc)
    return out


def bench_cold(n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"kk": [], "kk-fork": []}
    for _ in range(n):
        for way, flag in (("kk", "0"), ("kk-fork", "1")):
            res = subprocess.run(
                [sys.executable, "-c", COLD, flag, KERNEL, str(TIMEOUT)],
                capture_output=True,
                text=True,
                timeout=TIMEOUT * 3,
                check=True,
            )
            out[way].append(float(res.stdout.strip().splitlines()[-1]) * 1000)
    return out


def _cpu(pid: int) -> float:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


async def _many_once(way: str, n: int) -> tuple[float, float]:
    """``n`` kernels started at once, to ready: (wall ms, CPU ms per kernel)."""
    _switch(way)
    if way == "jc":
        from jupyter_client.manager import AsyncKernelManager as JcManager

        kms: list[Any] = [JcManager(kernel_name=KERNEL) for _ in range(n)]
    else:
        import kernelkeeper

        kms = [kernelkeeper.AsyncKernelManager(kernel_name=KERNEL) for _ in range(n)]
    from kernelkeeper import forkserver

    helpers = [os.getpid(), *(t["pid"] for t in forkserver.templates())]
    cpu0 = sum(_cpu(p) for p in helpers)
    clients: list[Any] = []

    async def one(km: Any) -> None:
        await km.start_kernel(stderr=subprocess.DEVNULL)
        kc = km.client()
        clients.append(kc)
        kc.start_channels()
        await kc.wait_for_ready(timeout=TIMEOUT)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(one(km) for km in kms))
        wall = (time.perf_counter() - t0) * 1000
        pids = [km.provisioner.pid if way == "jc" else km.process.pid for km in kms]
        cpu = sum(_cpu(p) for p in pids) + sum(_cpu(p) for p in helpers) - cpu0
    finally:
        for kc in clients:
            with contextlib.suppress(Exception):
                kc.stop_channels()
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms), return_exceptions=True)
    return wall, cpu * 1000 / n


def bench_many(rounds: int, n: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    walls: dict[str, list[float]] = {w: [] for w in WAYS}
    cpus: dict[str, list[float]] = {w: [] for w in WAYS}
    for i in range(rounds):
        for way in WAYS[i % 3 :] + WAYS[: i % 3]:
            wall, cpu = asyncio.run(_many_once(way, n))
            walls[way].append(wall)
            cpus[way].append(cpu)
    return walls, cpus


def cell(xs: list[float] | None) -> str:
    if not xs:
        return "—"
    return f"{min(xs):.1f} / {statistics.median(xs):.1f} / {max(xs):.1f} ms"


def ratio(xs: list[float] | None, ys: list[float] | None) -> str:
    if not xs or not ys:
        return "—"
    return f"{statistics.median(xs) / statistics.median(ys):.2f}"


def table(rows: list[tuple[str, dict[str, list[float]]]]) -> str:
    lines = [
        "| workload (min / median / max) | jupyter_client | kk spawn | kk fork-server "
        "| spawn / jc | fork / jc | fork / spawn |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows:
        jc, kk, fork = r.get("jc"), r.get("kk"), r.get("kk-fork")
        lines.append(
            f"| {name} | {cell(jc)} | {cell(kk)} | {cell(fork)} "
            f"| {ratio(kk, jc)} | {ratio(fork, jc)} | {ratio(fork, kk)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--cold", type=int, default=3, help="cold-start repetitions")
    ap.add_argument("--many", type=int, default=32, help="kernels started at once")
    ap.add_argument("--many-rounds", type=int, default=3, help="rounds of --many (0: skip)")
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args()
    compile_package()
    from kernelkeeper import forkserver

    try:
        for way in WAYS:  # warm-up: imports, the template, caches
            stop(*start(way))
        started = bench_start(args.repeat)
        restarted = bench_restart(args.repeat)
        walls, cpus = bench_many(args.many_rounds, args.many)
    finally:
        forkserver.shutdown_templates()
    cold = bench_cold(args.cold)
    rows = [
        ("start → ready (blocking start_new_kernel), template warm", started),
        ("restart now=True → ready", restarted),
        ("first start in a fresh process (template cold)", cold),
    ]
    if args.many_rounds:
        rows += [
            (f"{args.many} kernels at once → all ready (wall)", walls),
            (f"{args.many} kernels at once: CPU per started kernel", cpus),
        ]
    print(table(rows))
    try:
        load = os.getloadavg()
        print(f"\nload average at the end: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}")
    except OSError:
        pass
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(rows), f, indent=1)


if __name__ == "__main__":
    main()

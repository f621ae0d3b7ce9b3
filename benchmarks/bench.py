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

This file is the entry point (the command line, the children's dispatch and
the report); the pieces live beside it: ``bench_common`` (parameters, rows,
the table, events), ``bench_kernels`` (both libraries behind one face),
``bench_child`` (running and killing children), ``bench_lifecycle``,
``bench_roundtrip``, ``bench_concurrent`` and ``bench_many`` (the workloads).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import bench_common
from bench_child import BASE_ENV, CHILDREN, bench_in_child, kill_tree, leftovers
from bench_common import (
    KERNEL,
    LIBS,
    Params,
    Row,
    emit,
    kk_source,
    machine_info,
    progress,
    render_table,
    warn,
)
from bench_concurrent import bench_concurrent, bench_multi, child_concurrent
from bench_kernels import LIVE, warm_up
from bench_lifecycle import bench_interrupt, bench_lifecycle, bench_restart
from bench_many import (
    bench_cycles,
    bench_idle,
    bench_pool,
    bench_resources,
    child_cycles,
    child_idle,
    child_pool,
    child_resources,
)
from bench_roundtrip import bench_roundtrip
from compiled import compile_package

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


def child_workload(workload: str, p: Params, want: set[str]) -> dict[str, Any]:
    """One of the single-kernel workloads, in this child, after a warm-up."""
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


def child_main(args: argparse.Namespace) -> int:
    """Run the workload or trial ``--child`` names, then send its result as an event."""
    if args.event_fd is not None:
        os.set_inheritable(args.event_fd, False)  # no kernel may hold the pipe open
        bench_common.EVENT_FD = args.event_fd  # where emit() writes, in every module
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

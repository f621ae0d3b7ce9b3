"""Running a workload in a child process of bench.py, and killing it.

The parent re-runs ``bench.py --child ...`` for every workload that starts
kernels and reads the child's events from a pipe of its own. A child that goes
silent or overruns a deadline is killed with every process it started, and the
connection files it created in the run's private directory are removed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from bench_common import CHILD_IDLE_TIMEOUT, Params, Row, progress, warn

# What a child runs: the entry point, wherever the parent was started from (its
# directory is the child's sys.path[0], so the sibling modules are found).
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py")

BASE_ENV = "KKBENCH_BASE"  # the run's private directory (set by the parent)


def conn_file_arg(cmdline: Sequence[str], base: str) -> str | None:
    """The connection file in a kernel's command line, if it is in our private dir."""
    for arg in cmdline:
        k = arg.find(base) if base else -1
        if k >= 0:
            return arg[k:]
    return None


def conn_files() -> list[str]:
    """Connection files in the run's private directory (absolute paths).

    ``runtime/kernel-*.json``: JUPYTER_RUNTIME_DIR, used by kernelkeeper and by
    jupyter_client's AsyncKernelManager; ``tmp/*.json``: TMPDIR, where
    jupyter_client's ``start_new_kernel`` writes its connection files (a
    KernelManager without a connection_file uses ``tempfile.mkstemp``); and
    ``kernel-*.json`` in the working directory, where a jupyter_client
    MultiKernelManager left at ``connection_dir=""`` writes them.
    """
    base = os.environ.get(BASE_ENV, "")
    if not base:
        return []
    found = []
    for d, prefix in (
        (os.path.join(base, "runtime"), "kernel-"),
        (os.path.join(base, "tmp"), ""),
        (os.getcwd(), "kernel-"),
    ):
        if os.path.isdir(d):
            found += [
                os.path.join(d, f)
                for f in os.listdir(d)
                if f.startswith(prefix) and f.endswith(".json")
            ]
    return sorted(found)


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
    """Run bench.py as a child (``--child ...``) and collect its events.

    The parent never blocks on the child for long: it kills the child, every
    process the child started (its kernels included) and removes the connection
    files created meanwhile if the child sends no event for ``idle`` seconds,
    overruns a deadline it announced (``deadline_s``), or overruns ``timeout``.
    Events go through a pipe of their own (``--event-fd``), which the kernels do
    not inherit, so its end of file means the child has exited.
    """
    files_before = set(conn_files())
    run = ChildRun(args)
    r, w = os.pipe()
    err = tempfile.TemporaryFile()
    cmd = [sys.executable, SCRIPT, *args, "--event-fd", str(w)]
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
            for path in sorted(set(conn_files()) - files_before):
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


def leftovers(base: str) -> tuple[list[int], list[str]]:
    """Kernel processes still alive and connection files still present.

    Processes: our descendants, plus any process whose command line names a file
    in our private dir (a kernel re-parented after its manager died).
    """
    me = psutil.Process()
    found = {pr.pid: pr for pr in me.children(recursive=True)}
    for pr in psutil.process_iter(["cmdline"]):
        if pr.pid != me.pid and conn_file_arg(pr.info["cmdline"] or (), base):
            found.setdefault(pr.pid, pr)
    _, still = psutil.wait_procs(list(found.values()), timeout=5)
    procs = []
    for pr in still:
        with contextlib.suppress(psutil.Error):
            if pr.status() != psutil.STATUS_ZOMBIE:
                procs.append(pr.pid)
    return procs, [os.path.relpath(f, base) for f in conn_files()]

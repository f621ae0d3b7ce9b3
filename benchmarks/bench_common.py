"""What every piece of bench.py shares: parameters, table rows, events.

The constants (timeouts, deadlines, the two libraries), :class:`Params` and
:class:`Row`, the markdown table, the machine header, and the events a child
sends its parent (:func:`emit`, :func:`alive`, :func:`progress`, :func:`warn`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

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


def errtext(e: BaseException) -> str:
    """An exception as one short line, for events and the JSON dump."""
    return f"{type(e).__name__}: {e}"[:200]

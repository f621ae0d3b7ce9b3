#!/usr/bin/env python
"""Soak: start, stop, restart, interrupt and kill kernels for a while, then look for leaks.

Run from the repository root with the project's virtualenv::

    .venv/bin/python benchmarks/soak.py                 # 5 minutes
    .venv/bin/python benchmarks/soak.py --cycles 20 --seed 7 --json /tmp/soak.json

Each cycle does one thing, drawn at random (seeded) to the current kernel:
a plain stop/start/execute, ``restart_kernel(now=False)`` or ``now=True``, an
interrupt of a running ``time.sleep(30)``, a SIGKILL of the kernel's process
group while it is idle or while a cell runs, or a cell that calls
``os._exit(3)``. After a death the kernel is restarted or replaced by a new
one. Every wait has a deadline; an outcome is ``ok``, ``died`` (the
``KernelDiedError`` the death cases must raise) or a failure (a timeout, or
anything else unexpected). At the end the script reports fds, threads and RSS
of this process (at the start, after the warm-up and at the end) and the
kernel processes and ``kernel-*`` files left behind, and exits non-zero if
anything failed, grew or was left over. See benchmarks/README.md.

``tests/test_soak.py`` imports this file and runs :func:`run_soak` in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
from jupyter_core.paths import jupyter_runtime_dir

import kernelkeeper as kk

T = TypeVar("T")

# How often each kind comes up: the deck holds this many cards of each kind,
# shuffled, and is refilled when empty, so every kind shows up in every few
# dozen cycles while the order stays random.
KINDS: dict[str, int] = {
    "plain": 3,  # stop the kernel, start a new one, execute
    "restart": 2,  # restart_kernel(now=False), execute
    "restart_now": 2,  # restart_kernel(now=True), execute
    "interrupt": 3,  # interrupt time.sleep(30): KeyboardInterrupt error reply
    "kill_idle": 2,  # SIGKILL the idle kernel's group; a request must fail, not hang
    "kill_busy": 2,  # SIGKILL the group while a cell runs; the pending wait must fail
    "exit_cell": 2,  # a cell calling os._exit(3); the pending wait must fail
}
DEATHS = frozenset({"kill_idle", "kill_busy", "exit_cell"})
# The cell an interrupt must stop. "sleep" is one long time.sleep; "sleep-loop"
# sleeps in 10 ms steps. The difference: SIGINT to the kernel's group is a
# process-directed signal, and Linux sometimes hands it to one of the kernel's
# other threads; CPython then raises KeyboardInterrupt in the main thread only
# once that thread next runs bytecode, i.e. after a long sleep has ended. The
# loop is interrupted within 10 ms either way.
INTERRUPT_CELLS = {
    "sleep": "import time; time.sleep(30)",
    "sleep-loop": "import time\nfor _ in range(3000): time.sleep(0.01)",
}
RSS_GROWTH_LIMIT_MIB = 10.0
SETTLE_TIMEOUT = 10.0  # a process or fd that is already going may take this long


class Unexpected(Exception):
    """An outcome the cycle did not expect (the message says what and where)."""


class Hung(Unexpected):
    """A step did not finish within its deadline."""


@dataclass
class Snapshot:
    """Resources of this process at one moment."""

    fds: int
    threads: int
    rss_mib: float

    @classmethod
    def take(cls) -> Snapshot:
        gc.collect()
        me = psutil.Process()
        return cls(me.num_fds(), me.num_threads(), me.memory_info().rss / 2**20)


@dataclass
class KindCount:
    cycles: int = 0
    ok: int = 0
    died: int = 0  # a KernelDiedError where one was expected
    timeouts: int = 0
    errors: int = 0
    max_s: float = 0.0  # the slowest cycle of this kind


@dataclass
class Report:
    """What a soak run did and found; ``passed`` is the verdict."""

    seed: int
    cycles: int = 0
    warmup: int = 0
    elapsed_s: float = 0.0
    kinds: dict[str, KindCount] = field(default_factory=lambda: {k: KindCount() for k in KINDS})
    failures: list[dict[str, Any]] = field(default_factory=list)
    died_codes: dict[str, int] = field(default_factory=dict)  # "kind exit_code" -> count
    starts: int = 0
    stopped_early: str = ""
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    leftover_processes: list[str] = field(default_factory=list)
    leftover_files: list[str] = field(default_factory=list)

    def growth(self) -> dict[str, float]:
        warm, end = self.snapshots["warm"], self.snapshots["end"]
        return {
            "fds": end.fds - warm.fds,
            "threads": end.threads - warm.threads,
            "rss_mib": end.rss_mib - warm.rss_mib,
        }

    def problems(self) -> list[str]:
        """Everything that makes the run fail, in words (empty: it passed)."""
        out = [f"{len(self.failures)} unexpected outcome(s)"] if self.failures else []
        g = self.growth()
        if g["fds"] > 0:
            out.append(f"fds grew by {g['fds']:.0f}")
        if g["threads"] > 0:
            out.append(f"threads grew by {g['threads']:.0f}")
        if g["rss_mib"] >= RSS_GROWTH_LIMIT_MIB:
            out.append(f"RSS grew by {g['rss_mib']:.1f} MiB")
        if self.leftover_processes:
            out.append(f"{len(self.leftover_processes)} process(es) left over")
        if self.leftover_files:
            out.append(f"{len(self.leftover_files)} file(s) left over")
        return out

    @property
    def passed(self) -> bool:
        return not self.problems()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["growth"] = self.growth()
        d["problems"] = self.problems()
        d["passed"] = self.passed
        return d


def _timeout_error(e: BaseException) -> bool:
    return isinstance(e, (TimeoutError, asyncio.TimeoutError))


class Soak:
    """Runs cycles against one current kernel (a manager and its client)."""

    def __init__(
        self,
        report: Report,
        rng: random.Random,
        *,
        kernel_name: str,
        op_timeout: float,
        startup_timeout: float,
        kinds: Sequence[str] = tuple(KINDS),
        interrupt_cell: str = "sleep",
    ) -> None:
        self.interrupt_code = INTERRUPT_CELLS[interrupt_cell]
        self.report = report
        self.kinds = list(kinds)
        self.rng = rng
        # The deck has its own generator: the sequence of kinds then depends on
        # the seed alone, not on how earlier cycles went.
        self._deck_rng = random.Random(rng.random())
        self.kernel_name = kernel_name
        self.op_timeout = op_timeout
        self.startup_timeout = startup_timeout
        self.km: kk.AsyncKernelManager | None = None
        self.kc: kk.AsyncKernelClient | None = None
        self.step = ""
        self._deck: list[str] = []

    def draw(self) -> str:
        if not self._deck:
            self._deck = [k for k in self.kinds for _ in range(KINDS[k])]
            self._deck_rng.shuffle(self._deck)
        return self._deck.pop()

    # -- guarded steps ---------------------------------------------------------

    async def guard(self, step: str, aw: Awaitable[T], timeout: float) -> T:
        """Await ``aw`` as step ``step``; a step that overruns its deadline is a failure.

        The library's own timeouts should fire first; this outer deadline
        (a little later) catches a wait that ignores its timeout.
        """
        self.step = step
        try:
            return await asyncio.wait_for(aw, timeout + 5.0)
        except (asyncio.TimeoutError, TimeoutError) as e:
            if isinstance(e, kk.KernelTimeoutError):
                raise Hung(f"{step}: {e}") from e
            raise Hung(f"{step}: no result within {timeout + 5.0:.0f} s (guard)") from None

    async def start(self) -> None:
        km, kc = await self.guard(
            "start",
            kk.async_start_new_kernel(
                startup_timeout=self.startup_timeout, kernel_name=self.kernel_name
            ),
            self.startup_timeout,
        )
        self.km, self.kc = km, kc
        self.report.starts += 1

    async def stop(self, now: bool = False) -> None:
        km, kc, self.km, self.kc = self.km, self.kc, None, None
        try:
            if kc is not None:
                await self.guard("client close", kc.aclose(), self.op_timeout)
        finally:
            if km is not None:
                try:
                    await self.guard(
                        f"shutdown(now={now})", km.shutdown_kernel(now=now), self.op_timeout
                    )
                except BaseException:
                    # Whatever went wrong, do not leave the process behind.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(km.shutdown_kernel(now=True), self.op_timeout)
                    raise

    async def discard(self) -> None:
        """After a failure: get rid of the current kernel however it can be done."""
        with contextlib.suppress(Exception):
            await self.stop(now=True)

    def current(self) -> tuple[kk.AsyncKernelManager, kk.AsyncKernelClient]:
        assert self.km is not None and self.kc is not None
        return self.km, self.kc

    def pid(self) -> int:
        km, _ = self.current()
        proc = km.process
        if proc is None:
            raise Unexpected(f"{self.step}: the manager has no process")
        return int(proc.pid)

    async def check_execute(self, what: str = "execute") -> None:
        _, kc = self.current()
        res = await self.guard(
            what, kc.run_cell("21 * 2", timeout=self.op_timeout), self.op_timeout
        )
        if res.status != "ok" or res.result() != {"text/plain": "42"}:
            raise Unexpected(f"{what}: unexpected result {res.status} {res.outputs!r}")

    async def expect_death(self, kind: str, aw: Awaitable[Any], step: str) -> None:
        """``aw`` must raise KernelDiedError (or NotRunningError): the kernel is gone."""
        try:
            result = await self.guard(step, aw, self.op_timeout)
        except (kk.KernelDiedError, kk.NotRunningError) as e:
            code = getattr(e, "exit_code", None)
            key = f"{kind} {code}"
            self.report.died_codes[key] = self.report.died_codes.get(key, 0) + 1
            return
        raise Unexpected(f"{step}: expected KernelDiedError, got {result!r}")

    async def wait_gone(self, pid: int) -> None:
        """Wait (bounded) until the manager sees its process has exited."""
        km, _ = self.current()
        self.step = f"wait for the manager to see pid {pid} exit"
        deadline = time.monotonic() + self.op_timeout
        while await km.is_alive():
            if time.monotonic() > deadline:
                raise Hung(f"{self.step}: still alive after {self.op_timeout:.0f} s")
            await asyncio.sleep(0.02)  # polling a condition with a deadline

    async def running_cell(
        self, marker: str, code: str
    ) -> tuple[asyncio.Task[kk.CellResult], list[str]]:
        """Start ``print(marker); code`` and return its task once the cell's code runs.

        The printed marker proves the cell itself is running: a SIGINT that
        lands between execute_input and the cell is caught inside ipykernel
        and the cell never replies at all. The list collects the cell's iopub
        messages (for the report, if the cell then hangs).
        """
        _, kc = self.current()
        started = asyncio.Event()
        seen: list[str] = []
        t0 = time.monotonic()

        def on_output(msg: dict[str, Any]) -> None:
            c = msg["content"]
            what = c.get("execution_state") or c.get("ename") or c.get("text", "")
            seen.append(f"{time.monotonic() - t0:.3f}s {msg['msg_type']} {str(what)[:40]!r}")
            if msg["msg_type"] == "stream" and marker in c.get("text", ""):
                started.set()

        task = asyncio.ensure_future(
            kc.run_cell(
                f"print({marker!r}, flush=True); {code}",
                timeout=self.op_timeout,
                on_output=on_output,
            )
        )
        self.step = "wait for the cell to start"
        waiter = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait(
                {task, waiter}, timeout=self.op_timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if not started.is_set():
            await _cancel(task)
            raise Hung(f"{self.step}: the cell did not start within {self.op_timeout:.0f} s")
        return task, seen

    # -- the kinds of cycle ----------------------------------------------------

    async def cycle(self, kind: str, index: int) -> str:
        """Run one cycle of ``kind``; returns ``ok`` or ``died``, raises Unexpected."""
        if self.km is None:
            await self.start()
        if kind == "plain":
            await self.stop(now=self.rng.random() < 0.5)
            await self.start()
            await self.check_execute()
            return "ok"
        if kind in ("restart", "restart_now"):
            await self.restart(now=kind == "restart_now")
            return "ok"
        if kind == "interrupt":
            await self.interrupt(index)
            return "ok"
        if kind == "kill_idle":
            await self.check_execute("execute before the kill")
            pid = self.pid()
            os.killpg(pid, signal.SIGKILL)
            await self.wait_gone(pid)
            _, kc = self.current()
            await self.expect_death(
                kind, kc.run_cell("pass", timeout=self.op_timeout), "run_cell on the killed kernel"
            )
        elif kind == "kill_busy":
            task, _ = await self.running_cell(f"soak-{index}", "import time; time.sleep(30)")
            os.killpg(self.pid(), signal.SIGKILL)
            try:
                await self.expect_death(kind, task, "run_cell pending while killed")
            finally:
                await _cancel(task)
        elif kind == "exit_cell":
            _, kc = self.current()
            await self.expect_death(
                kind,
                kc.run_cell("import os; os._exit(3)", timeout=self.op_timeout),
                "run_cell of os._exit(3)",
            )
        else:
            raise ValueError(f"unknown kind {kind!r}")
        await self.recover()
        return "died"

    async def restart(self, now: bool) -> None:
        km, kc = self.current()
        old = self.pid()
        await self.guard(
            f"restart_kernel(now={now})", km.restart_kernel(now=now), self.startup_timeout
        )
        await self.guard(
            "wait_for_ready after restart",
            kc.wait_for_ready(timeout=self.startup_timeout),
            self.startup_timeout,
        )
        if self.pid() == old:
            raise Unexpected(f"restart_kernel(now={now}): the pid did not change")
        await self.check_execute("execute after restart")

    async def interrupt(self, index: int) -> None:
        km, _ = self.current()
        task, seen = await self.running_cell(f"soak-{index}", self.interrupt_code)
        try:
            await self.guard("interrupt_kernel", km.interrupt_kernel(), self.op_timeout)
            seen.append("(interrupt sent)")
            res = await self.guard("reply to the interrupted cell", task, self.op_timeout)
        except Hung as e:
            raise Hung(f"{e}; iopub of the cell: {seen}") from e
        finally:
            await _cancel(task)
        err = res.error or {}
        if res.status != "error" or err.get("ename") != "KeyboardInterrupt":
            raise Unexpected(
                f"interrupt: reply {res.status} {err.get('ename')!r}, not KeyboardInterrupt"
            )
        await self.check_execute("execute after the interrupt")

    async def recover(self) -> None:
        """After a death: restart the kernel (either way), or replace it."""
        how = self.rng.choice(("restart", "restart_now", "replace"))
        if how == "replace":
            await self.stop(now=self.rng.random() < 0.5)
            await self.start()
            await self.check_execute("execute on the new kernel")
            return
        km, kc = self.current()
        now = how == "restart_now"
        await self.guard(
            f"restart_kernel(now={now}) after the death",
            km.restart_kernel(now=now),
            self.startup_timeout,
        )
        await self.guard(
            "wait_for_ready after the death",
            kc.wait_for_ready(timeout=self.startup_timeout),
            self.startup_timeout,
        )
        await self.check_execute("execute after the restart")


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if it still runs and wait for it to be done."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task


# -- what was left behind ------------------------------------------------------


def _is_kernel_cmdline(cmdline: list[str]) -> bool:
    return any("ipykernel" in part for part in cmdline)


def leftover_processes(runtime_dir: str, children_before: set[int]) -> list[str]:
    """Our new child processes, and orphaned ipykernels whose cmdline names ``runtime_dir``."""
    me = psutil.Process()
    found: dict[int, str] = {}
    for p in me.children(recursive=True):
        if p.pid in children_before:
            continue
        with contextlib.suppress(psutil.Error):
            found[p.pid] = f"{p.pid} {p.status()} {' '.join(p.cmdline())[:160]}"
    for p in psutil.process_iter(["pid", "ppid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = p.info["cmdline"] or []
            if p.pid in found or not _is_kernel_cmdline(cmdline):
                continue
            if not any(runtime_dir in part for part in cmdline):
                continue  # someone else's kernel
            ppid = p.info["ppid"]
            if ppid in (0, 1) or not psutil.pid_exists(ppid):
                found[p.pid] = f"{p.pid} orphan {' '.join(cmdline)[:160]}"
    return sorted(found.values())


def leftover_files(runtime_dir: str) -> list[str]:
    return sorted(p.name for p in Path(runtime_dir).rglob("kernel-*"))


async def _settle(check: Callable[[], bool], timeout: float = SETTLE_TIMEOUT) -> None:
    """Give things that are already going (an exiting process, a closing fd) a moment.

    On the loop itself, not in a worker thread: a thread pool started here
    would show up as thread growth.
    """
    # Process exits and fd counts of this process have no event to wait on: poll.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)


# -- the run -------------------------------------------------------------------


async def run_soak(
    *,
    cycles: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    warmup: int = 3,
    op_timeout: float = 20.0,
    startup_timeout: float = 60.0,
    max_failures: int = 0,
    kernel_name: str = "python3",
    kinds: Sequence[str] | None = None,
    interrupt_cell: str = "sleep",
    runtime_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run ``warmup`` cycles, then ``cycles`` cycles (or cycles for ``minutes``).

    ``max_failures`` > 0 stops the run after that many unexpected outcomes
    (0: never stop early); ``kinds`` limits the cycles to those kinds;
    ``interrupt_cell`` is a key of :data:`INTERRUPT_CELLS`. The
    kernels go to ``runtime_dir`` (default: Jupyter's runtime dir as the
    environment sets it), which is searched for leftovers at the end.
    """
    if (cycles is None) == (minutes is None):
        raise ValueError("give exactly one of cycles and minutes")
    unknown = set(kinds or ()) - set(KINDS)
    if interrupt_cell not in INTERRUPT_CELLS:
        raise ValueError(f"unknown interrupt cell {interrupt_cell!r}")
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    rt = runtime_dir or jupyter_runtime_dir()
    say = progress or (lambda _msg: None)
    report = Report(seed=seed, warmup=warmup)
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    report.snapshots["start"] = Snapshot.take()
    soak = Soak(
        report,
        random.Random(seed),
        kernel_name=kernel_name,
        op_timeout=op_timeout,
        startup_timeout=startup_timeout,
        kinds=kinds or tuple(KINDS),
        interrupt_cell=interrupt_cell,
    )
    t0 = time.monotonic()
    end_at = None if minutes is None else t0 + minutes * 60
    index = 0
    try:
        while True:
            measured = index - warmup
            if index == warmup:
                # Compare like with like: no kernel running at either snapshot.
                await soak.discard()
                report.snapshots["warm"] = Snapshot.take()
            if measured >= 0 and (
                (cycles is not None and measured >= cycles)
                or (end_at is not None and time.monotonic() >= end_at)
            ):
                break
            kind = soak.draw()
            count = report.kinds[kind]
            count.cycles += 1
            c0 = time.monotonic()
            try:
                outcome = await soak.cycle(kind, index)
            except Exception as e:
                count.max_s = max(count.max_s, time.monotonic() - c0)
                timeout = isinstance(e, Hung) or _timeout_error(e)
                if timeout:
                    count.timeouts += 1
                else:
                    count.errors += 1
                msg = str(e) if isinstance(e, Unexpected) else f"{soak.step}: {e!r}"
                report.failures.append(
                    {
                        "cycle": index,
                        "kind": kind,
                        "step": soak.step,
                        "timeout": timeout,
                        "error": msg[:2000],
                    }
                )
                say(f"cycle {index:4d} {kind:12s} FAILED ({msg.splitlines()[0][:200]})")
                await soak.discard()
                if max_failures and len(report.failures) >= max_failures:
                    report.stopped_early = f"stopped after {len(report.failures)} failures"
                    break
            else:
                count.max_s = max(count.max_s, time.monotonic() - c0)
                if outcome == "died":
                    count.died += 1
                else:
                    count.ok += 1
                say(f"cycle {index:4d} {kind:12s} {outcome:4s} {time.monotonic() - c0:6.2f} s")
            index += 1
    finally:
        await soak.discard()
    report.cycles = max(0, index - warmup)
    report.elapsed_s = time.monotonic() - t0
    if "warm" not in report.snapshots:  # stopped during the warm-up
        report.snapshots["warm"] = report.snapshots["start"]
    warm = report.snapshots["warm"]
    await _settle(
        lambda: (
            not leftover_processes(rt, children_before)
            and not leftover_files(rt)
            and Snapshot.take().fds <= warm.fds
        ),
    )
    report.snapshots["end"] = Snapshot.take()
    report.leftover_processes = leftover_processes(rt, children_before)
    report.leftover_files = leftover_files(rt)
    return report


def render(report: Report) -> str:
    """A small markdown summary of ``report``."""
    lines = [
        f"soak: {report.cycles} cycles after {report.warmup} warm-up, seed {report.seed}, "
        f"{report.elapsed_s:.0f} s, {report.starts} kernel starts"
        + (f" ({report.stopped_early})" if report.stopped_early else ""),
        "",
        "| kind | cycles | ok | died (expected) | timeouts | other failures | slowest |",
        "|---|---|---|---|---|---|---|",
    ]
    total = KindCount()
    for kind, c in report.kinds.items():
        lines.append(
            f"| {kind} | {c.cycles} | {c.ok} | {c.died} | {c.timeouts} | {c.errors} "
            f"| {c.max_s:.2f} s |"
        )
        total.max_s = max(total.max_s, c.max_s)
        for name in ("cycles", "ok", "died", "timeouts", "errors"):
            setattr(total, name, getattr(total, name) + getattr(c, name))
    lines.append(
        f"| **all** | {total.cycles} | {total.ok} | {total.died} | {total.timeouts} "
        f"| {total.errors} | {total.max_s:.2f} s |"
    )
    s, g = report.snapshots, report.growth()
    lines += [
        "",
        "| this process | start | after warm-up | end | growth since warm-up |",
        "|---|---|---|---|---|",
        f"| fds | {s['start'].fds} | {s['warm'].fds} | {s['end'].fds} | {g['fds']:+.0f} |",
        f"| threads | {s['start'].threads} | {s['warm'].threads} | {s['end'].threads} "
        f"| {g['threads']:+.0f} |",
        f"| RSS (MiB) | {s['start'].rss_mib:.1f} | {s['warm'].rss_mib:.1f} "
        f"| {s['end'].rss_mib:.1f} | {g['rss_mib']:+.1f} |",
        "",
        f"leftovers: {len(report.leftover_processes)} processes, "
        f"{len(report.leftover_files)} kernel-* files",
    ]
    lines += [f"  process {p}" for p in report.leftover_processes]
    lines += [f"  file {f}" for f in report.leftover_files]
    if report.died_codes:
        codes = Counter(report.died_codes)
        lines.append(
            "deaths seen (kind exit_code: count): "
            + ", ".join(f"{k}: {n}" for k, n in sorted(codes.items()))
        )
    for f in report.failures:
        lines.append(f"FAILED cycle {f['cycle']} {f['kind']}: {f['error'].splitlines()[0][:300]}")
    problems = report.problems()
    lines.append("result: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    how_long = ap.add_mutually_exclusive_group()
    how_long.add_argument("--minutes", type=float, help="run this long (default 5)")
    how_long.add_argument("--cycles", type=int, help="run this many cycles instead")
    ap.add_argument("--seed", type=int, help="random seed (default: a fresh one, printed)")
    ap.add_argument("--warmup", type=int, default=3, help="cycles before the baseline (3)")
    ap.add_argument("--json", metavar="PATH", help="write the numbers here")
    ap.add_argument("--kernel", default="python3", help="kernel name (python3)")
    ap.add_argument(
        "--interrupt-cell",
        choices=sorted(INTERRUPT_CELLS),
        default="sleep",
        help="what the interrupt stops: one time.sleep(30) (default) or a loop of 10 ms sleeps",
    )
    ap.add_argument("--kinds", help=f"only these kinds, comma-separated ({','.join(KINDS)})")
    ap.add_argument("--op-timeout", type=float, default=20.0, help="deadline per operation (20 s)")
    ap.add_argument("--startup-timeout", type=float, default=60.0, help="start deadline (60 s)")
    ap.add_argument("--max-failures", type=int, default=0, help="stop after this many (0: never)")
    ap.add_argument(
        "--runtime-dir",
        help="put the kernels' files here (default: a private temp dir, removed afterwards)",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="no line per cycle")
    args = ap.parse_args(argv)
    minutes = args.minutes if args.minutes is not None or args.cycles is not None else 5.0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)

    private = None
    if args.runtime_dir:
        runtime_dir = args.runtime_dir
    else:
        private = tempfile.mkdtemp(prefix="kksoak-")
        runtime_dir = os.path.join(private, "rt")
        # The kernels' IPython history stays out of the user's profile too.
        os.environ.setdefault("IPYTHONDIR", os.path.join(private, "ipython"))
    os.environ["JUPYTER_RUNTIME_DIR"] = runtime_dir
    os.makedirs(runtime_dir, exist_ok=True)

    def progress(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    what = f"{args.cycles} cycles" if args.cycles is not None else f"{minutes} minutes"
    progress(f"soak: {what}, seed {seed}, runtime dir {runtime_dir}")
    try:
        report = asyncio.run(
            run_soak(
                cycles=args.cycles,
                minutes=None if args.cycles is not None else minutes,
                seed=seed,
                warmup=args.warmup,
                op_timeout=args.op_timeout,
                startup_timeout=args.startup_timeout,
                max_failures=args.max_failures,
                kernel_name=args.kernel,
                kinds=args.kinds.split(",") if args.kinds else None,
                interrupt_cell=args.interrupt_cell,
                runtime_dir=runtime_dir,
                progress=progress,
            )
        )
    finally:
        if private is not None and not leftover_files(runtime_dir):
            shutil.rmtree(private, ignore_errors=True)
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())

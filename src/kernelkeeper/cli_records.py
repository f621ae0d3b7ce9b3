"""Records of the long-lived kernels the command line starts, and their control.

A record is ``kernelkeeper-<id>.json`` in the Jupyter runtime directory
(mode 0600, next to the kernel's connection file), written when
``kernelkeeper start`` has a ready kernel. It outlives the command; the
kernel it names is checked against the process table every time it is read
(pid *and* start time, so a reused pid is not mistaken for the kernel), and
one whose kernel is gone shows as dead until ``prune`` or ``stop`` removes it.

:func:`control` is the one place a recorded kernel is interrupted, stopped
or restarted without the manager that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from .cli_output import UsageError
from .connection import ConnectionInfo, runtime_dir

__all__ = ["Record", "control", "find_record", "list_records", "process_stats"]

PREFIX = "kernelkeeper-"


@dataclass
class Record:
    """What ``start`` knows about a kernel it left running."""

    id: str
    name: str
    kernel: str  # the kernel type asked for
    spec: str  # the spec's name
    language: str
    pid: int
    create_time: float  # the process's start time (psutil), against pid reuse
    connection_file: str
    log: str
    cwd: str
    interrupt_mode: str = "signal"
    transport: str = "tcp"
    started: float = field(default_factory=time.time)
    restarts: int = 0

    @property
    def path(self) -> str:
        return record_path(self.id)

    def files(self) -> list[str]:
        """Every file of the kernel: connection file, ipc sockets, log."""
        paths = [self.connection_file, self.log]
        with contextlib.suppress(Exception):
            paths += ConnectionInfo.from_file(self.connection_file).ipc_paths()
        return paths

    def process(self) -> psutil.Process | None:
        """The kernel's process if it still runs (not a zombie, not a reused pid)."""
        try:
            p = psutil.Process(self.pid)
            if abs(p.create_time() - self.create_time) > 1.0:
                return None
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def save(self) -> None:
        """Write the record atomically, mode 0600."""
        directory = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".kk-", suffix=".json", dir=directory)  # 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(self), f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self) -> None:
        """Remove the record and every file of the kernel."""
        for p in [*self.files(), self.path]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def record_path(kernel_id: str) -> str:
    return os.path.join(runtime_dir(), f"{PREFIX}{kernel_id}.json")


def log_path(kernel_id: str) -> str:
    return os.path.join(runtime_dir(), f"{PREFIX}{kernel_id}.log")


def list_records() -> list[Record]:
    """Every readable record in the runtime directory, oldest first."""
    out: list[Record] = []
    directory = runtime_dir()
    for entry in os.listdir(directory):
        if not (entry.startswith(PREFIX) and entry.endswith(".json")):
            continue
        try:
            with open(os.path.join(directory, entry), encoding="utf-8") as f:
                data = json.load(f)
            out.append(Record(**data))
        except (OSError, ValueError, TypeError):
            continue  # half-written by someone else, or not ours
    out.sort(key=lambda r: r.started)
    return out


def find_record(ref: str) -> Record:
    """The record whose id or name is ``ref`` (or whose id starts with it)."""
    records = list_records()
    for r in records:
        if ref in (r.id, r.name):
            return r
    matches = [r for r in records if len(ref) >= 4 and r.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"{ref!r} is the start of several kernel ids; give more of it")
    known = ", ".join(f"{r.id[:8]} ({r.name})" if r.name else r.id[:8] for r in records)
    hint = f"known: {known}" if known else "no kernels are recorded; start one with `start`"
    raise UsageError(f"no kernel with id or name {ref!r} ({hint}; see `kernelkeeper ls`)")


def process_stats(records: list[Record], window: float = 0.1) -> dict[str, dict[str, Any]]:
    """Memory and CPU of each live kernel's whole process tree.

    CPU is a percentage of one core over ``window`` seconds, sampled for all
    kernels at once.
    """
    trees: dict[str, list[psutil.Process]] = {}
    for r in records:
        p = r.process()
        if p is None:
            continue
        with contextlib.suppress(psutil.Error):
            trees[r.id] = [p, *p.children(recursive=True)]
    for procs in trees.values():
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.cpu_percent(None)
    if trees:
        time.sleep(window)  # a measuring window, not a wait for something to happen
    stats: dict[str, dict[str, Any]] = {}
    for rid, procs in trees.items():
        rss = 0
        cpu = cpu_time = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
                cpu += p.cpu_percent(None)
                t = p.cpu_times()
                cpu_time += t.user + t.system
        stats[rid] = {
            "rss": rss,
            "cpu_percent": cpu,
            "cpu_time": cpu_time,
            "processes": len(procs),
            "status": _status(procs[0]),
        }
    return stats


def _status(p: psutil.Process) -> str:
    try:
        s = p.status()
    except psutil.Error:
        return "dead"
    return "stopped" if s in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP) else "running"


# -- control -----------------------------------------------------------------


async def _wait_gone(rec: Record, timeout: float) -> bool:
    """Poll (with a deadline) until the kernel's process is gone: it is not our
    child, so there is no exit to await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while rec.alive():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _signal(rec: Record, signum: int) -> bool:
    """Signal the kernel's process group if the process is ours to signal."""
    p = rec.process()
    if p is None:
        return False
    try:
        if p.uids().real != os.getuid():
            return False
        os.killpg(os.getpgid(rec.pid), signum)
    except (ProcessLookupError, psutil.Error):
        return False
    except PermissionError:
        return False
    return True


async def _message(rec: Record, what: str, timeout: float) -> bool:
    """Send an ``interrupt`` or ``shutdown`` request on the control channel and
    wait (at most ``timeout``) for the reply."""
    from .client import AsyncKernelClient
    from .errors import KernelError

    # interrupt_mode="message" and no manager: interrupt() sends a message too.
    kc = AsyncKernelClient(rec.connection_file, interrupt_mode="message", hb_max_misses=None)
    kc.start_channels(shell=False, iopub=False, stdin=False, hb=False)
    try:
        if what == "interrupt":
            await kc.interrupt(reply=True, timeout=timeout)
        else:
            await kc.shutdown(reply=True, timeout=timeout)
        return True
    except KernelError:
        return False
    finally:
        await kc.aclose()


async def control(rec: Record, action: str, *, now: bool = False, timeout: float = 5.0) -> str:
    """Interrupt, stop or restart a recorded kernel; returns what was done.

    Done with what needs no manager: messages on the kernel's control
    channel from its connection file, signals to its process group when it
    is ours, and a fresh launch on the same connection file for a restart.
    """
    if action == "interrupt":
        if rec.interrupt_mode != "message" and _signal(rec, signal.SIGINT):
            return "interrupted (SIGINT)"
        if await _message(rec, "interrupt", timeout):
            return "interrupted (interrupt_request)"
        raise UsageError(f"kernel {rec.id[:8]} did not answer the interrupt_request")
    if action == "stop":
        return await _stop(rec, now, timeout)
    if action == "restart":
        await _stop(rec, now, timeout, keep_record=True)
        await relaunch(rec, timeout=max(timeout, 60.0))
        return f"restarted (pid {rec.pid})"
    raise ValueError(action)


async def _stop(rec: Record, now: bool, timeout: float, keep_record: bool = False) -> str:
    how = "was not running"
    if rec.alive():
        how = "killed"
        if not now:
            # Graceful first: a shutdown_request, then SIGTERM, then SIGKILL.
            await _message(rec, "shutdown", timeout)
            if await _wait_gone(rec, timeout):
                how = "stopped"
            elif _signal(rec, signal.SIGTERM) and await _wait_gone(rec, timeout):
                how = "terminated (SIGTERM)"
        if rec.alive():
            _signal(rec, signal.SIGKILL)
            if not await _wait_gone(rec, timeout):
                raise UsageError(f"kernel {rec.id[:8]} (pid {rec.pid}) would not die")
    if keep_record:
        for p in rec.files():
            if p != rec.connection_file and p != rec.log:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
    else:
        rec.remove()
    return how


async def relaunch(rec: Record, timeout: float) -> None:
    """Start the recorded kernel again on its connection file (same ports, key)."""
    from .finder import default_finder

    info = ConnectionInfo.from_file(rec.connection_file)
    spec = default_finder().get_spec(rec.kernel)
    pid, create_time = await launch_detached(
        spec, rec.id, rec.connection_file, rec.log, rec.cwd, timeout, info=info
    )
    rec.pid, rec.create_time = pid, create_time
    rec.restarts += 1
    rec.save()


async def launch_detached(
    spec: Any,
    kernel_id: str,
    connection_file: str,
    log: str,
    cwd: str,
    timeout: float,
    *,
    info: ConnectionInfo | None = None,
    transport: str = "tcp",
    encryption: str = "auto",
) -> tuple[int, float]:
    """Start a kernel that outlives this process; return its pid and start time
    once it answers.

    It runs in its own session, outside the death guard of this process, with
    stdout and stderr going to ``log`` (a pipe to us would break when we exit).
    ``info`` (a previous run's connection info) keeps ports, key and Curve keys.
    """
    from .client import AsyncKernelClient
    from .launch import launch_kernel

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        info, proc = await launch_kernel(
            spec,
            kernel_id=kernel_id,
            connection_file=connection_file,
            connection_info=info,
            transport=transport,
            cwd=cwd,
            stdout=fd,
            stderr=fd,
            independent=True,
            startup_timeout=timeout,
            transport_encryption=encryption,
        )
    finally:
        os.close(fd)
    try:
        kc = AsyncKernelClient(info, manager=proc, interrupt_mode=spec.interrupt_mode)
        kc.start_channels(stdin=False, hb=False, control=False)
        try:
            await kc.wait_for_ready(timeout)
        finally:
            await kc.aclose()
        create_time = psutil.Process(proc.pid).create_time()
    except BaseException:
        await proc.cleanup()  # kills it and removes its connection file
        raise
    return proc.pid, create_time

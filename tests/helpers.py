"""Small helpers shared by the test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import psutil

from kernelkeeper import KernelEvent, KernelState

T = TypeVar("T")

KERNELS_DIR = Path(__file__).resolve().parent / "kernels"


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value.

    Raises ``TimeoutError`` if it is still falsy after ``timeout`` seconds (the
    predicate is always evaluated at least once, and once more at the deadline).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"condition {predicate!r} not met within {timeout} s")
        time.sleep(min(interval, remaining))


# clock_nanosleep and nanosleep on x86_64 and aarch64.
_SLEEP_SYSCALLS = {"230", "35", "115", "101"}


def main_thread_sleeping(pid: int) -> bool:
    """Whether the main thread of ``pid`` is blocked in a sleep syscall (Linux).

    Python has a window before a blocking call: a SIGINT whose handler runs
    after the main thread's last check for signals and before it enters, say,
    ``time.sleep`` is acted upon only when the call returns. A test that
    interrupts the moment a cell prints "sleeping" can land in that window
    (with any kernel manager) and then waits out the whole sleep. Tests that
    check an interrupt stops a sleep interrupt once this is true. There is no
    event for a thread entering a syscall, so callers poll /proc.
    """
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        syscall = Path(f"/proc/{pid}/syscall").read_text().split(" ", 1)[0]
    except OSError:
        return False
    return "nanosleep" in wchan or syscall in _SLEEP_SYSCALLS


def sleep_cell(seconds: int = 60, say: str | None = "sleeping") -> str:
    """A cell that prints ``say`` (unless None), then sleeps ``seconds`` in 0.1 s steps.

    The steps close the window :func:`main_thread_sleeping` describes without
    polling: a SIGINT handled just before one step's ``time.sleep`` acts when
    that step ends, 0.1 s later, not after the whole sleep.
    """
    head = "import time\n" + ("" if say is None else f"print({say!r}, flush=True)\n")
    return head + f"for _ in range({seconds * 10}): time.sleep(0.1)"


def wait_until_sleeping(pid: int, timeout: float = 30.0) -> None:
    """Block until :func:`main_thread_sleeping` (``TimeoutError`` after ``timeout``)."""
    wait_for(lambda: main_thread_sleeping(pid), timeout, interval=0.005)


async def until_sleeping(pid: int, timeout: float = 30.0) -> None:
    """Wait until :func:`main_thread_sleeping` (``TimeoutError`` after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not main_thread_sleeping(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the main thread of {pid} never slept within {timeout} s")
        await asyncio.sleep(0.005)


def kernel_script(name: str) -> str:
    """Absolute path of the test kernel script ``tests/kernels/<name>.py``."""
    filename = name if name.endswith(".py") else f"{name}.py"
    path = KERNELS_DIR / filename
    if not path.is_file():
        raise FileNotFoundError(f"no test kernel script {path}")
    return str(path)


class Recorder:
    """A thread-safe lifecycle event listener one can wait on."""

    def __init__(self) -> None:
        self.events: list[KernelEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: KernelEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def kinds(self) -> list[str]:
        with self._cond:
            return [e.kind for e in self.events]

    def states(self) -> list[KernelState]:
        with self._cond:
            return [e.state for e in self.events if e.kind == "state"]

    async def wait(self, pred: Callable[[list[KernelEvent]], Any], timeout: float = 30.0) -> Any:
        """Wait until ``pred(events)`` is truthy and return its value."""

        def block() -> Any:
            with self._cond:
                result = self._cond.wait_for(lambda: pred(list(self.events)), timeout)
            if not result:
                raise TimeoutError(f"no matching event within {timeout} s: {self.kinds()}")
            return result

        return await asyncio.to_thread(block)

    async def wait_kind(self, kind: str, timeout: float = 30.0) -> KernelEvent:
        """Wait for the first event of ``kind``."""
        return await self.wait(lambda evs: find(evs, kind), timeout)  # type: ignore[no-any-return]


def find(events: Iterable[KernelEvent], kind: str, **detail: Any) -> KernelEvent | None:
    """The first event of ``kind`` whose detail matches ``detail``."""
    for e in events:
        if e.kind == kind and all(e.detail.get(k) == v for k, v in detail.items()):
            return e
    return None


def is_dead(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(procs: list[psutil.Process], timeout: float = 10.0, reap: bool = False) -> None:
    """Wait until every process has exited (a zombie counts as exited).

    With ``reap=True``, then reap those that were orphaned to us (the suite is
    a subreaper); never pass kernels then: only their manager may reap them.
    Not psutil.wait_procs: it reaps, and it never sees a zombie as gone.
    """
    deadline = time.monotonic() + timeout
    while not all(is_dead(p) for p in procs):
        alive = [p.pid for p in procs if not is_dead(p)]
        assert time.monotonic() < deadline, f"still running after {timeout} s: {alive}"
        time.sleep(0.02)
    for p in procs if reap else ():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if p.is_running() and p.ppid() == os.getpid():
                os.waitpid(p.pid, os.WNOHANG)


async def assert_gone(
    procs: list[psutil.Process], timeout: float = 10.0, reap: bool = False
) -> None:
    await asyncio.to_thread(wait_gone, procs, timeout, reap)

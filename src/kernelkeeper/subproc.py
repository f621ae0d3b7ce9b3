"""Process-level manager for a kernel running in a local subprocess.

This is the first seed's ``KernelManager(popen, files_to_cleanup=None,
win_interrupt_evt=None)``. It follows the process's exit without polling:
on Linux through a pidfd registered with the event loop (no thread per
kernel), elsewhere through one waiter thread per kernel.

The kernel runs in its own session, so its process group holds the kernel
and everything it spawned; signals go to the whole group, and when the
kernel exits, the rest of its group is killed *before* the kernel is reaped
(while the exited kernel is a zombie its pid, and so the group id, cannot be
reused by an unrelated process).
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import collections
import contextlib
import errno
import logging
import os
import signal as _signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable
from typing import IO

from .managerabc import KernelManagerABC

__all__ = ["KernelManager", "ReportedProcess"]

log = logging.getLogger("kernelkeeper.subproc")

_TAIL_BYTES = 16 * 1024


class _StderrPump:
    """Copies kernels' stderr to ours on one library thread, through a bounded buffer.

    Our own stderr may be a pipe nobody reads: a write to it can block for
    ever. Written on the event loop, that would freeze every kernel, heartbeat
    and timeout of the loop; here only this thread waits. The loop only
    appends to the buffer (never blocking); what does not fit is dropped and
    counted by the caller.
    """

    limit = 1 << 20  # bytes buffered at most, across all kernels

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[int | None, IO[bytes], bytes]] = collections.deque()
        self._size = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def put(self, fd: int | None, sink: IO[bytes], data: bytes) -> bool:
        """Queue ``data`` for ``sink`` (written to ``fd`` when known); False if dropped."""
        with self._cond:
            if self._closed or self._size + len(data) > self.limit:
                return False
            self._queue.append((fd, sink, data))
            self._size += len(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kk-stderr", daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    idle_exit = 5.0  # seconds without output after which the thread ends

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    if not self._cond.wait(self.idle_exit) and not self._queue:
                        # Quiet kernels: no thread held for them; put() starts one
                        # again (it checks _thread under this same lock).
                        self._thread = None
                        return
                if not self._queue:
                    return
                fd, sink, data = self._queue.popleft()
            try:
                if fd is not None:
                    # The raw fd, not the buffered stream: a write stuck here must not
                    # hold the stream's lock (interpreter shutdown would wait on it).
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                else:
                    sink.write(data)
                    sink.flush()
            except (OSError, ValueError):
                pass  # our stderr is closed or broken: nothing to copy to
            finally:
                with self._cond:
                    self._size -= len(data)

    def close(self, timeout: float) -> None:
        """Write what is buffered (waiting at most ``timeout`` s), then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)


_pump: _StderrPump | None = None
_pump_lock = threading.Lock()


def _stderr_pump() -> _StderrPump:
    global _pump
    with _pump_lock:
        if _pump is None:
            _pump = _StderrPump()
        return _pump


def _forget_pump() -> None:
    global _pump, _pump_lock
    _pump, _pump_lock = None, threading.Lock()  # threads do not survive fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pump)


@atexit.register
def _flush_pump() -> None:
    if _pump is not None:
        _pump.close(timeout=1.0)


def _fileno(stream: IO[bytes] | None) -> int | None:
    try:
        return None if stream is None else stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class ReportedProcess(abc.ABC):
    """A kernel process that is not our child: another process (a fork-server
    template) started it, reaps it and reports its exit status.

    It comes with a pidfd opened by its parent before it could be reaped, so
    it is followed exactly like a child of ours. The parent also kills the rest
    of the kernel's process group before reaping it.
    """

    pid: int
    returncode: int | None = None

    @property
    @abc.abstractmethod
    def pidfd(self) -> int | None:
        """A pidfd of the process (readable once it has exited), or None."""

    @abc.abstractmethod
    async def exit_status(self) -> tuple[int, bool]:
        """Once the process has exited: its status, and whether its parent killed
        the rest of its group (False: it is up to us)."""


class KernelManager(KernelManagerABC):
    """Manages a single kernel in a subprocess on this host.

    :param popen: the started kernel, a :class:`subprocess.Popen`, an
        :class:`asyncio.subprocess.Process` or a :class:`ReportedProcess`.
    :param files_to_cleanup: paths removed by :meth:`cleanup` (connection
        file, ipc sockets).
    :param win_interrupt_evt: on Windows, a handle used to interrupt the
        kernel; unused on other platforms.
    :param kernel_id: the kernel's id (a new uuid4 string when not given).
    :param stderr_fd: a pipe carrying the kernel's stderr; the manager keeps
        its tail (for error reports) and copies it to ``stderr_sink``. The copy
        never blocks the event loop: it goes through a bounded buffer written
        by a library thread; what does not fit is dropped and counted in
        :attr:`stderr_dropped`.

    The process is watched from the event loop that first uses the manager;
    once that loop is closed (``asyncio.run()`` returned), the next loop to
    use it takes over.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes] | asyncio.subprocess.Process | ReportedProcess,
        files_to_cleanup: Iterable[str] | None = None,
        win_interrupt_evt: object | None = None,
        *,
        kernel_id: str | None = None,
        stderr_fd: int | None = None,
        stderr_sink: IO[bytes] | None = None,
    ) -> None:
        self.popen = popen
        self.files_to_cleanup = list(files_to_cleanup or [])
        self.win_interrupt_evt = win_interrupt_evt
        self.kernel_id: str = kernel_id or str(uuid.uuid4())
        self.pid: int = popen.pid
        try:
            self._own_group = os.getpgid(self.pid) == self.pid
        except OSError:  # already gone and reaped
            self._own_group = False
        self._stderr_fd = stderr_fd
        self._stderr_sink = stderr_sink
        self._sink_fd = _fileno(stderr_sink)
        #: Bytes of the kernel's stderr not copied to ours because the buffer was full.
        self.stderr_dropped = 0
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_len = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: asyncio.Future[int] | None = None
        self._pidfd: int | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._returncode: int | None = None
        self._cleaned = False

    def __repr__(self) -> str:
        state = "alive" if self._returncode is None else f"exited({self._returncode})"
        return f"<subproc.KernelManager pid={self.pid} {state}>"

    # -- watching the process -------------------------------------------------

    def start_watching(self) -> None:
        """Begin following the process's exit and stderr on the running loop.

        Called by the launcher; the async methods call it on first use.
        """
        loop = asyncio.get_running_loop()
        if self._exited is not None:
            old = self._loop
            if old is None or old is loop or not old.is_closed():
                return
            self._rewatch(loop)
            return
        self._loop = loop
        self._exited = loop.create_future()
        if self._stderr_fd is not None:
            os.set_blocking(self._stderr_fd, False)
            loop.add_reader(self._stderr_fd, self._read_stderr)
        if isinstance(self.popen, asyncio.subprocess.Process):
            self._waiter = loop.create_task(self._wait_asyncio(self.popen))
            return
        if isinstance(self.popen, ReportedProcess):
            self._pidfd = self.popen.pidfd
            if self._pidfd is not None:
                loop.add_reader(self._pidfd, self._on_exit)
            else:
                self._waiter = loop.create_task(self._wait_reported(self.popen))
            return
        if self.popen.returncode is not None:
            self._finish(self.popen.returncode)
            return
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._on_exit)
        else:
            threading.Thread(target=self._wait_thread, daemon=True, name="kk-waitpid").start()

    def _rewatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow the process from ``loop``: the loop that watched it is closed.

        A closed loop has dropped its readers and its tasks; the futures it
        made cannot be awaited from another loop. The pidfd and stderr pipe
        are still ours, so register them again here.
        """
        self._loop = loop
        self._exited = loop.create_future()
        if self._returncode is not None:
            self._exited.set_result(self._returncode)
            return
        if self._stderr_fd is not None:
            loop.add_reader(self._stderr_fd, self._read_stderr)
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._on_exit)
        elif isinstance(self.popen, ReportedProcess):
            # The exit came, and its report was awaited on the closed loop.
            self._waiter = loop.create_task(self._wait_reported(self.popen))
        elif isinstance(self.popen, asyncio.subprocess.Process):
            # Its transport belonged to the old loop; follow the pid with a pidfd.
            self._waiter = None
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except (AttributeError, OSError):
                self._finish(self._reap_foreign())
                return
            loop.add_reader(self._pidfd, self._on_exit)
        else:
            # The waiter thread wakes the current loop, unless the exit came while
            # no loop was open.
            with contextlib.suppress(ChildProcessError, OSError):
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                if info is not None:
                    loop.call_soon(self._on_exit)

    def _reap_foreign(self) -> int:
        """Exit status of an asyncio child whose loop is gone (255 when unknown)."""
        assert isinstance(self.popen, asyncio.subprocess.Process)
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by asyncio's child watcher
            return 255
        return os.waitstatus_to_exitcode(status) if pid else 255

    async def _wait_asyncio(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._kill_rest_of_group()
        self._finish(code)

    async def _wait_reported(self, proc: ReportedProcess) -> None:
        code, group_killed = await proc.exit_status()
        if not group_killed:
            self._kill_rest_of_group()
        self._finish(code)

    def _wait_thread(self) -> None:
        # Fallback without pidfd: wait without reaping, so the group can be
        # killed while the pid is still reserved.
        try:
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except (ChildProcessError, OSError):
            pass
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_exit)

    def _on_exit(self) -> None:
        if self._returncode is not None:
            return  # already handled (a second wake-up after a change of loop)
        if self._pidfd is not None and self._loop is not None:
            self._loop.remove_reader(self._pidfd)
            if not isinstance(self.popen, ReportedProcess):  # that one owns its pidfd
                os.close(self._pidfd)
            self._pidfd = None
        if isinstance(self.popen, ReportedProcess):
            # Its parent reaps it (and kills its group first); we learn the status from it.
            assert self._loop is not None
            self._waiter = self._loop.create_task(self._wait_reported(self.popen))
            return
        self._kill_rest_of_group()
        if isinstance(self.popen, asyncio.subprocess.Process):
            self._finish(self._reap_foreign())
            return
        code = self.popen.poll()
        if code is None:  # spurious wake-up; cannot happen with pidfd, be safe
            code = self.popen.wait()
        self._finish(code)

    def _kill_rest_of_group(self) -> None:
        if not self._own_group:
            return
        try:
            os.killpg(self.pid, _signal.SIGKILL)
        except OSError as e:
            if e.errno not in (errno.ESRCH, errno.EPERM):
                raise

    def _finish(self, code: int) -> None:
        self._drain_stderr()
        self._returncode = code
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(code)

    def _read_stderr(self) -> None:
        fd = self._stderr_fd
        if fd is None:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_stderr()
            return
        self._keep(data)

    def _drain_stderr(self) -> None:
        while self._stderr_fd is not None:
            try:
                data = os.read(self._stderr_fd, 65536)
            except (BlockingIOError, OSError):
                return
            if not data:
                self._close_stderr()
                return
            self._keep(data)

    def _keep(self, data: bytes) -> None:
        self._tail.append(data)
        self._tail_len += len(data)
        while self._tail_len > _TAIL_BYTES and len(self._tail) > 1:
            self._tail_len -= len(self._tail.popleft())
        sink = self._stderr_sink
        if sink is not None and not _stderr_pump().put(self._sink_fd, sink, data):
            self.stderr_dropped += len(data)

    def _close_stderr(self) -> None:
        fd, self._stderr_fd = self._stderr_fd, None
        if fd is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        os.close(fd)

    # -- KernelManagerABC -----------------------------------------------------

    @property
    def exit_code(self) -> int | None:
        """The process's exit status once it has exited (negative: killed by that signal)."""
        return self._returncode

    def stderr_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines the kernel wrote to stderr."""
        self._drain_stderr()
        text = b"".join(self._tail).decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    async def is_alive(self) -> bool:
        """Is the kernel process still running?"""
        self.start_watching()
        assert self._exited is not None
        return not self._exited.done()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the kernel process to exit (at most ``timeout`` seconds).

        Returns True if the kernel is still alive after waiting, False if it
        exited, like :meth:`is_alive`.
        """
        self.start_watching()
        assert self._exited is not None
        if not self._exited.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), timeout)
        return not self._exited.done()

    async def signal(self, signum: int) -> None:
        """Send ``signum`` to the kernel's process group (the kernel and its children).

        A kernel that has already exited is left alone.
        """
        if self._returncode is not None or (self._exited is not None and self._exited.done()):
            return
        try:
            if self._own_group:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    async def interrupt(self) -> None:
        """Interrupt the kernel by sending SIGINT to its process group.

        Kernels that ask for interrupts by message are not handled here; the
        lifecycle manager's ``interrupt_kernel`` sends ``interrupt_request``.
        """
        if sys.platform == "win32":  # pragma: no cover
            await self.signal(_signal.CTRL_C_EVENT)
        else:
            await self.signal(_signal.SIGINT)

    async def kill(self) -> None:
        """Kill the kernel and its process group with SIGKILL and wait for the exit."""
        await self.signal(_signal.SIGKILL)
        await self.wait()

    async def cleanup(self) -> None:
        """Release what the manager holds: kill the kernel if it still runs, reap
        it, close the pipes and remove ``files_to_cleanup``."""
        if self._cleaned:
            return
        if await self.is_alive():
            await self.kill()
        self._cleaned = True
        if self._waiter is not None:
            await self._waiter
        self._close_stderr()
        for path in self.files_to_cleanup:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("Could not remove %s: %s", path, e)

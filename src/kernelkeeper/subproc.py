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

import asyncio
import collections
import contextlib
import errno
import logging
import os
import signal as _signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import IO

from .managerabc import KernelManagerABC

__all__ = ["KernelManager"]

log = logging.getLogger("kernelkeeper.subproc")

_TAIL_BYTES = 16 * 1024


class KernelManager(KernelManagerABC):
    """Manages a single kernel in a subprocess on this host.

    :param popen: the started kernel, a :class:`subprocess.Popen` or an
        :class:`asyncio.subprocess.Process`.
    :param files_to_cleanup: paths removed by :meth:`cleanup` (connection
        file, ipc sockets).
    :param win_interrupt_evt: on Windows, a handle used to interrupt the
        kernel; unused on other platforms.
    :param stderr_fd: a pipe carrying the kernel's stderr; the manager keeps
        its tail (for error reports) and copies it to ``stderr_sink``.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes] | asyncio.subprocess.Process,
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
        self.kernel_id = kernel_id
        self.pid: int = popen.pid
        try:
            self._own_group = os.getpgid(self.pid) == self.pid
        except OSError:  # already gone and reaped
            self._own_group = False
        self._stderr_fd = stderr_fd
        self._stderr_sink = stderr_sink
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
        if self._exited is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._exited = loop.create_future()
        if self._stderr_fd is not None:
            os.set_blocking(self._stderr_fd, False)
            loop.add_reader(self._stderr_fd, self._read_stderr)
        if isinstance(self.popen, asyncio.subprocess.Process):
            self._waiter = loop.create_task(self._wait_asyncio(self.popen))
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

    async def _wait_asyncio(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
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
        if self._pidfd is not None and self._loop is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._kill_rest_of_group()
        assert isinstance(self.popen, subprocess.Popen)
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
        if sink is not None:
            try:
                sink.write(data)
                sink.flush()
            except (OSError, ValueError):
                self._stderr_sink = None

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

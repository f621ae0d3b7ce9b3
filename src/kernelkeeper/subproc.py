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
import contextlib
import errno
import logging
import os
import select
import signal as _signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable
from typing import IO

from .managerabc import KernelManagerABC
from .stderr_tail import StderrTail

__all__ = ["KernelManager", "ReportedProcess"]

log = logging.getLogger("kernelkeeper.subproc")


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
        self._stderr = StderrTail(stderr_fd, stderr_sink)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: asyncio.Future[int] | None = None
        self._pidfd: int | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._returncode: int | None = None
        self._cleaned = False
        self._exit_seen = False  # the exit is known, its status maybe not yet

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
        self._stderr.watch(loop)
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
        self._stderr.watch(loop)
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
        self._exit_seen = True
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
        self._stderr.drain()
        self._returncode = code
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(code)

    # -- KernelManagerABC -----------------------------------------------------

    @property
    def stderr_dropped(self) -> int:
        """Bytes of the kernel's stderr not copied to ours because the buffer was full."""
        return self._stderr.dropped

    @property
    def exit_code(self) -> int | None:
        """The process's exit status once it has exited (negative: killed by that signal)."""
        return self._returncode

    def stderr_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines the kernel wrote to stderr."""
        return self._stderr.text(lines)

    async def is_alive(self) -> bool:
        """Is the kernel process still running?"""
        self.start_watching()
        assert self._exited is not None
        # An exit the loop (or asyncio's child watcher) has not dispatched yet
        # counts: asked right after the kernel died, the answer is not "alive".
        return not self._exited.done() and not self._exit_pending()

    def _exit_pending(self) -> bool:
        if self._exit_seen:  # its status is on the way (a forked kernel's report)
            return True
        if self._pidfd is not None:
            return bool(select.select([self._pidfd], [], [], 0)[0])
        if isinstance(self.popen, ReportedProcess):
            return False  # not our child: its parent tells us
        try:  # without reaping: that stays with whoever waits for it
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except (ChildProcessError, OSError):
            return False
        return info is not None

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
        self._stderr.close()
        for path in self.files_to_cleanup:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("Could not remove %s: %s", path, e)

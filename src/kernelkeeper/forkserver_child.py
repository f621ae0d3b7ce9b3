"""The manager's side of one forked kernel: its pid, pidfd and exit report.

A kernel forked by a fork-server template (see :mod:`kernelkeeper.forkserver`)
is the template's child, not ours: the template reaps it and reports its exit
status on a socket of its own; the manager follows it through a pidfd the
template opened for it.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket

from .subproc import ReportedProcess

__all__ = ["ForkedProcess", "recv_fds_now", "recv_with_fds"]

log = logging.getLogger("kernelkeeper.forkserver")

#: How long a fork's reply or exit report may take.
REPLY_TIMEOUT = 30.0
MAX_MSG = 1 << 16


def recv_fds_now(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the fds it carries (up to 4), read now: what ``recvmsg`` raises, raised."""
    fds = array.array("i")
    msg, anc, _flags, _addr = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return msg, list(fds)


async def recv_with_fds(
    sock: socket.socket, timeout: float, seen: list[tuple[bytes, list[int]]] | None = None
) -> tuple[bytes, list[int]]:
    """One message and the fds it carries from a non-blocking unix socket (b"" at EOF).

    ``seen`` also gets the message as soon as it is read: a wait cancelled
    around then (its result never returned; the message may even be read while
    the cancellation is under way) must not lose what it carried.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[tuple[bytes, list[int]]] = loop.create_future()

    def readable() -> None:
        try:
            got = recv_fds_now(sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            got = (b"", [])
        if seen is not None:
            seen.append(got)
        if not fut.done():
            fut.set_result(got)
        elif seen is None:
            # The wait was cancelled, and its cancellation lets the loop run
            # before this reader is removed (wait_for waits for the inner
            # future to settle): nobody takes what this message carried.
            for fd in got[1]:
                os.close(fd)

    loop.add_reader(sock.fileno(), readable)
    try:
        return await asyncio.wait_for(fut, timeout)
    finally:
        loop.remove_reader(sock.fileno())


class ForkedProcess(ReportedProcess):
    """A kernel forked by a template: its pid, a pidfd, and the socket its status comes on."""

    def __init__(self, pid: int, pidfd: int, reply: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd: int | None = pidfd
        self._reply: socket.socket | None = reply

    def __repr__(self) -> str:
        return f"<ForkedProcess pid={self.pid} returncode={self.returncode}>"

    @property
    def pidfd(self) -> int | None:
        """The pidfd the template opened for this kernel."""
        return self._pidfd

    async def exit_status(self) -> tuple[int, bool]:
        """The template's report of the exit; if the template is gone, what a
        pidfd wait tells (the kernel was re-parented to us) or 255."""
        code: int | None = None
        try:
            while self._reply is not None and code is None:
                msg, fds = await recv_with_fds(self._reply, REPLY_TIMEOUT)
                for fd in fds:
                    os.close(fd)
                if not msg:
                    break
                report = json.loads(msg)
                if "exit" in report:
                    code = int(report["exit"])
        except (asyncio.TimeoutError, ValueError) as e:
            log.warning("No exit report for forked kernel %d: %s", self.pid, e)
        finally:
            if self._reply is not None:
                self._reply.close()
                self._reply = None
        group_killed = code is not None
        if code is None:
            code = self._status_from_pidfd()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.returncode = code
        return code, group_killed

    def _status_from_pidfd(self) -> int:
        if self._pidfd is None:
            return 255
        try:
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except (ChildProcessError, OSError, AttributeError):
            return 255  # re-parented to init, which reaped it
        if info is None:
            return 255
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def abandon(self) -> None:
        """Kill a kernel nobody will manage (its start was cancelled) and let go of it."""
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        for fd in (self._pidfd,):
            if fd is not None:
                os.close(fd)
        self._pidfd = None
        if self._reply is not None:
            self._reply.close()
            self._reply = None

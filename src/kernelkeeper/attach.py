"""The process of a kernel we did not start, known from its connection file.

:class:`ForeignProcess` gives the lifecycle manager the same process-level
face for such a kernel as :class:`~kernelkeeper.subproc.KernelManager` gives
for one it launched. Liveness comes from the kernel's heartbeat, and from its
pid when that is known (followed through a pidfd, which works for processes
that are not our children). Signals need the pid and a process of our own
user; without them the lifecycle manager falls back to messages
(``interrupt_request``, ``shutdown_request``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal as _signal

import zmq
import zmq.asyncio

from .connection import ConnectionInfo, channel_listens
from .curve import configure_client
from .errors import LifecycleError
from .subproc import KernelManager as ProcessManager

__all__ = ["ForeignProcess"]

log = logging.getLogger("kernelkeeper.attach")

#: Seconds a heartbeat ping may take before it counts as missed.
PING_TIMEOUT = 1.0
#: Pings missed in a row that make a kernel without a known pid dead.
PING_MISSES = 3
#: Seconds between two looks at a kernel without a known pid that answers.
LOOK_INTERVAL = 0.2


def _pid_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (``Z`` for a zombie), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"  # exists, another user's
        return "?"
    # The command name (in parentheses) may itself contain spaces or ')'.
    rest = stat.rpartition(")")[2].split()
    return rest[0] if rest else "?"


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a running process (not gone, not a zombie waiting to be reaped)?"""
    state = _pid_state(pid)
    return state is not None and state not in ("Z", "X")


def owned_by_us(pid: int) -> bool:
    """Does process ``pid`` run as our user (so that we may signal it)?"""
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


class ForeignProcess(ProcessManager):
    """A kernel process started by someone else (a :class:`KernelManagerABC` by duck typing
    of :class:`~kernelkeeper.subproc.KernelManager`, which the lifecycle manager holds).

    :param info: the kernel's connection info (its heartbeat is pinged).
    :param pid: the kernel's pid, when known: then liveness also follows the
        process and signals can be sent (to a process of our own user).
    """

    def __init__(
        self, info: ConnectionInfo, pid: int | None = None, *, kernel_id: str | None = None
    ) -> None:
        # Not the base initialiser: there is no Popen, no pipe, no group of ours.
        self.info = info
        self.known_pid = pid
        self.pid = pid or 0
        self.kernel_id = kernel_id or ""
        self.files_to_cleanup = []
        self._returncode: int | None = None
        self._exited: asyncio.Future[int] | None = None
        self._cleaned = False
        self._context = zmq.asyncio.Context.instance()

    def __repr__(self) -> str:
        pid = self.known_pid if self.known_pid is not None else "unknown"
        state = "alive" if self._returncode is None else "gone"
        return f"<ForeignProcess pid={pid} {state}>"

    # -- liveness ---------------------------------------------------------------

    async def ping(self, timeout: float = PING_TIMEOUT) -> bool:
        """One heartbeat round trip within ``timeout`` seconds."""
        sock = self._context.socket(zmq.REQ)
        sock.linger = 0
        try:
            configure_client(sock, self.info)
            sock.connect(self.info.url("hb"))
            # The send too: with no peer a REQ send waits.
            await asyncio.wait_for(sock.send(b"ping"), timeout)
            await asyncio.wait_for(sock.recv(), timeout)
        except (asyncio.TimeoutError, zmq.ZMQError):
            return False
        finally:
            sock.close()
        return True

    def _gone(self) -> None:
        if self._returncode is None:
            # The exit status of a process that is not our child is not ours to read.
            self._returncode = 0
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(self._returncode)

    @property
    def exit_code(self) -> int | None:
        """None while the kernel runs; 0 once it is gone (its real status is unknown)."""
        return self._returncode

    def stderr_tail(self, lines: int = 20) -> str:
        return ""  # not captured: the kernel's stderr is not ours

    @property
    def stderr_dropped(self) -> int:
        """Always 0: nothing of the kernel's stderr passes through us."""
        return 0

    def start_watching(self) -> None:
        """Nothing to register: the waits below follow the process themselves."""

    async def is_alive(self) -> bool:
        """Alive by its pid (when known) and, without one, by its heartbeat."""
        if self._returncode is not None:
            return False
        if self.known_pid is not None:
            if not pid_alive(self.known_pid):
                self._gone()  # a pid does not come back
                return False
            return True
        # Not final without a pid: a kernel still binding its ports, or briefly
        # unreachable, may answer the next time.
        return await self.ping() or (
            await asyncio.to_thread(channel_listens, self.info, "hb") and await self.ping()
        )

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` s) for the kernel to end; True if it still runs.

        With a pid, the exit is followed through a pidfd; without one, the
        heartbeat is pinged until it misses :data:`PING_MISSES` times in a row.
        """
        if self._returncode is not None:
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wait_gone(), timeout)
        return self._returncode is None

    async def _wait_gone(self) -> None:
        pid = self.known_pid
        if pid is not None:
            await self._wait_pid(pid)
        else:
            misses = 0
            while misses < PING_MISSES:
                # A refused connect says the kernel is gone at once; a silent
                # heartbeat only after a few timeouts.
                if not await asyncio.to_thread(channel_listens, self.info, "hb"):
                    break
                if await self.ping():
                    misses = 0
                    # Answered: look again after a pause (a probe, not an ordering wait).
                    await asyncio.sleep(LOOK_INTERVAL)
                else:
                    misses += 1
        self._gone()

    async def _wait_pid(self, pid: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except (AttributeError, OSError):
            await self._poll_pid(pid)
            return
        readable: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(pidfd, wake)
        try:
            # A zombie of someone else's counts as gone, yet may keep the pidfd quiet
            # only if it exited before we opened it: check once after registering.
            if pid_alive(pid):
                await readable
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)

    @staticmethod
    async def _poll_pid(pid: int) -> None:
        # No pidfd on this system: nothing tells us of a stranger's exit, so look.
        for _ in iter(lambda: pid_alive(pid), False):
            await asyncio.sleep(0.1)

    # -- signals ----------------------------------------------------------------

    @property
    def can_signal(self) -> bool:
        """Is the pid known and the process our user's?"""
        return self.known_pid is not None and owned_by_us(self.known_pid)

    async def signal(self, signum: int) -> None:
        """Send ``signum`` to the kernel (the process only: its group is not ours).

        Raises :class:`LifecycleError` when the pid is unknown or the process
        belongs to another user.
        """
        pid = self.known_pid
        if pid is None:
            raise LifecycleError("Cannot signal an attached kernel whose pid is unknown")
        if not owned_by_us(pid):
            if not pid_alive(pid):
                return
            raise LifecycleError(f"Cannot signal kernel process {pid}: it is not our user's")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    async def interrupt(self) -> None:
        await self.signal(_signal.SIGINT)

    async def kill(self) -> None:
        """SIGKILL the kernel when we may, and wait until it is gone."""
        if self.can_signal:
            await self.signal(_signal.SIGKILL)
            await self.wait()

    async def cleanup(self) -> None:
        """Nothing to release: the kernel's files belong to whoever started it."""
        self._cleaned = True

"""What a client knows of its kernel's life, and the one place a death fails its waits.

With a manager (the abstract :class:`~kernelkeeper.managerabc.KernelManagerABC`)
the process is the authority: :class:`DeathWatch` awaits its exit. Without
one the heartbeat decides, after ``hb_max_misses`` missed beats in a row, and
a kernel that beats again counts as alive again. Either way
:meth:`Liveness.died` records the death and fails every pending wait at once
(replies, executions, ``get_msg`` calls) with
:class:`~kernelkeeper.errors.KernelDiedError`.

Runs on the client's event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from .channels import TaskOwner
from .errors import KernelDiedError
from .managerabc import KernelManagerABC

__all__ = ["Death", "DeathWatch", "Liveness"]

log = logging.getLogger("kernelkeeper.client")


@dataclasses.dataclass
class Death:
    """What the client knows of its kernel's death."""

    message: str
    exit_code: int | None
    stderr_tail: str
    #: The manager's process generation that died; None: judged by the heartbeat.
    generation: int | None

    def error(self) -> KernelDiedError:
        return KernelDiedError(self.message, self.exit_code, self.stderr_tail)


class Liveness:
    """The death state of one client's kernel.

    :param fail_waits: fails every pending wait with errors from the given
        factory; returns how many it failed.
    """

    def __init__(
        self,
        manager: KernelManagerABC | None,
        fail_waits: Callable[[Callable[[], BaseException]], int],
        hb_max_misses: int | None = 5,
    ) -> None:
        self.manager = manager
        self.hb_max_misses = hb_max_misses
        self._fail_waits = fail_waits
        self._death: Death | None = None

    def died(self, death: Death) -> None:
        """Record ``death`` and fail every pending wait."""
        self._death = death
        n = self._fail_waits(death.error)
        if n:
            log.info("Kernel died; failed %d pending request(s)", n)

    def current(self) -> Death | None:
        """The death of the current process, if it is dead."""
        d = self._death
        if d is not None and d.generation is not None and self.manager is not None:
            if self.manager.generation != d.generation:
                # Restarted since: the death belongs to a process that is gone.
                self._death = d = None
        return d

    def check(self) -> None:
        """Raise :class:`KernelDiedError` if the kernel is known to be dead."""
        d = self.current()
        if d is not None:
            raise d.error()

    def died_error(self, when: str) -> KernelDiedError:
        """An error for a process death noticed by a waiter (not recorded)."""
        m = self.manager
        code = m.exit_code if m is not None else None
        tail = m.stderr_tail() if m is not None else ""
        return KernelDiedError(f"Kernel died {when}", code, tail)

    def hb_beat(self) -> None:
        if self._death is not None and self._death.generation is None:
            self._death = None  # it beats again: alive after all (or restarted)

    def hb_missed(self, missed: int, time_to_dead: float) -> None:
        limit = self.hb_max_misses
        if self.manager is not None or limit is None or missed < limit:
            return  # with a manager, the process is the authority on death
        if self._death is None:
            self.died(
                Death(
                    f"Kernel stopped answering its heartbeat ({missed} beats of "
                    f"{time_to_dead} s missed)",
                    None,
                    "",
                    None,
                )
            )


class DeathWatch(TaskOwner):
    """Follows the manager's process: a death fails the client's pending waits."""

    def __init__(self, liveness: Liveness) -> None:
        self.liveness = liveness
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self.liveness.manager is not None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kk-death")

    async def _run(self) -> None:
        m = self.liveness.manager
        assert m is not None
        while True:
            generation = m.generation
            if await m.wait():
                continue  # still alive (a manager whose wait has a deadline)
            self.liveness.died(Death("Kernel died", m.exit_code, m.stderr_tail(), generation))
            # A restart brings the kernel back in a new process; watch that one.
            await m.wait_restarted()

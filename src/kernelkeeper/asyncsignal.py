"""A wake-up flag to wait on with a deadline, safe against lost cancellations."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["Signal"]


class Signal:
    """A wake-up flag to wait on with a deadline.

    Not ``asyncio.wait_for(event.wait(), t)``: on Python 3.11 that loses a
    cancellation arriving just as the event is set, and the cancelled task
    goes on running (the pool's aclose would then wait for ever).
    """

    def __init__(self) -> None:
        self._flag = False
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        self._flag = True
        self.pulse()

    def clear(self) -> None:
        """Clear the flag (waiters from now on wait)."""
        self._flag = False

    def pulse(self) -> None:
        """Wake the current waiters without leaving the flag set."""
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            _resolve(fut)

    async def wait(self, timeout: float | None) -> None:
        """Return when set (or pulsed), or after ``timeout`` seconds."""
        if self._flag:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, _resolve, fut)
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

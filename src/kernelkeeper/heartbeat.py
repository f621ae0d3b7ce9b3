"""Heartbeat pings: is a kernel's process still answering?

A kernel answers its heartbeat from a thread of its own (zmq's device in
ipykernel), so a kernel busy computing still answers and a frozen one
(SIGSTOP, a deadlock in C) does not.

All the monitors of one event loop with the same interval share one
:class:`HeartbeatClock`: a single timer that, on each tick, reads the answer
to every monitor's previous ping and sends the next one, all without
blocking. An idle manager of 64 kernels thus wakes once per interval rather
than three times per kernel (send, answer, sleep), and a ping costs a few
microseconds of its thread: see the README's idle-kernels benchmark row.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from .connection import ConnectionInfo
from .curve import configure_client

__all__ = ["HeartbeatClock", "HeartbeatMonitor"]


class HeartbeatMonitor:
    """Pings a kernel's heartbeat every ``interval`` seconds on its own REQ socket.

    A ping not answered within ``interval`` (by the next tick) is a missed
    beat; ``misses`` in a row make a hang.
    """

    def __init__(
        self,
        info: ConnectionInfo,
        interval: float,
        misses: int,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.info = info
        self.interval = interval
        self.misses = misses
        base = context if context is not None else zmq.asyncio.Context.instance()
        # A plain (non-asyncio) view of the same context: the clock only ever
        # sends and receives with NOBLOCK, so no future and no fd watch per ping.
        self._context: zmq.Context[Any] = zmq.Context.shadow(base.underlying)
        #: Pings unanswered in a row.
        self.missed = 0
        #: Monotonic time of the last answer (or of the start).
        self.last_beat = time.monotonic()
        self._reported = False
        self._sock: zmq.Socket[Any] | None = None
        self._sent = False  # a ping is out, its answer due at the next tick
        self._active: Callable[[], bool] = lambda: False
        self._found: asyncio.Future[tuple[int, float] | None] | None = None

    def _socket(self) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self._context.socket(zmq.REQ)
        sock.linger = 0
        configure_client(sock, self.info)
        sock.connect(self.info.url("hb"))
        return sock

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._sent = False

    async def next_hang(self, active: Callable[[], bool]) -> tuple[int, float] | None:
        """Ping until the kernel hangs: ``(missed beats, seconds since the last beat)``.

        A hang is reported once; the next one only after the kernel answered
        again. Returns None as soon as ``active()`` is false (checked on each
        tick).
        """
        loop = asyncio.get_running_loop()
        self._active = active
        self._found = loop.create_future()
        self._sock = self._socket()
        clock = HeartbeatClock.of(loop, self.interval)
        clock.add(self)
        try:
            return await self._found
        finally:
            clock.discard(self)
            self._close()
            self._found = None

    def _tick(self) -> bool:
        """One tick of the clock: read the last answer, send the next ping.

        Returns False when this monitor is done (its result is set).
        """
        found = self._found
        if found is None or found.done():
            return False
        if not self._active():
            found.set_result(None)
            return False
        if self._sent:
            assert self._sock is not None
            try:
                self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                # Unanswered: a REQ socket that lost its reply is stuck, start over.
                self._close()
                self._sock = self._socket()
                self.missed += 1
                if self.missed >= self.misses and not self._reported:
                    self._reported = True
                    found.set_result((self.missed, time.monotonic() - self.last_beat))
                    return False
            else:
                self.missed = 0
                self._reported = False
                self.last_beat = time.monotonic()
        assert self._sock is not None
        try:
            self._sock.send(b"ping", zmq.NOBLOCK)
            self._sent = True
        except zmq.Again:
            # No peer yet (nothing bound there): counts as unanswered next tick.
            self._close()
            self._sock = self._socket()
            self._sent = True
        return True


class HeartbeatClock:
    """One timer for all the heartbeat monitors of a loop with the same interval.

    A monitor that joins sends its first ping at the next tick, so every ping
    has one whole interval to be answered.
    """

    _clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, HeartbeatClock]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._loop = loop
        self.interval = interval
        self._members: dict[HeartbeatMonitor, None] = {}  # ordered, for fair ticks
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, interval: float) -> HeartbeatClock:
        """The clock of ``loop`` for ``interval`` (made on first use)."""
        clocks = cls._clocks.setdefault(loop, {})
        clock = clocks.get(interval)
        if clock is None:
            clock = clocks[interval] = cls(loop, interval)
        return clock

    def __len__(self) -> int:
        return len(self._members)

    def add(self, monitor: HeartbeatMonitor) -> None:
        self._members[monitor] = None
        if self._timer is None:
            self._timer = self._loop.call_later(self.interval, self._tick)

    def discard(self, monitor: HeartbeatMonitor) -> None:
        self._members.pop(monitor, None)
        if not self._members and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        for monitor in list(self._members):
            try:
                keep = monitor._tick()
            except zmq.ZMQError as e:  # the context was terminated under us
                found = monitor._found
                if found is not None and not found.done():
                    found.set_exception(e)
                keep = False
            if not keep:
                self._members.pop(monitor, None)
        if self._members:
            self._timer = self._loop.call_later(self.interval, self._tick)

"""The zmq side of one client session of the gateway, below the kernel's bridge.

A :class:`ClientSession` holds the shell, stdin (and, once used, control)
DEALER sockets of one WebSocket client ``session_id`` and its replay buffer;
:class:`SignedReceiver` is the receive loop both it and the kernel's bridge
(:mod:`kernelkeeper.gateway_bridge`) use, which checks the kernel's signature
on every message.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq
import zmq.asyncio

from .connection import ConnectionInfo
from .curve import configure_client
from .session import DELIM, Session

__all__ = [
    "DEALERS",
    "BridgeLimits",
    "BridgeStats",
    "ClientSession",
    "SessionHost",
    "SignedReceiver",
    "Sink",
    "is_output",
    "log_send_failure",
    "take_sockets",
]

log = logging.getLogger("kernelkeeper.gateway")

#: The channels a session has a DEALER socket for.
DEALERS = ("shell", "control", "stdin")
_YIELD_EVERY = 8


class Sink(Protocol):
    """Where a session's messages go while a WebSocket is attached."""

    def deliver(self, channel: str, parts: list[bytes]) -> None: ...

    def close_after_drain(self, code: int, message: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class BridgeLimits:
    """:param replay_bytes: most bytes buffered per session while it has no socket.
    :param replay_age: seconds buffered messages (and a session with no socket) are kept.
    :param ready_timeout: seconds a WebSocket upgrade (or a restart's resume) waits
        for the kernel to answer.
    :param probe_interval: seconds between readiness probes."""

    replay_bytes: int = 32 << 20
    replay_age: float = 120.0
    ready_timeout: float = 60.0
    probe_interval: float = 0.25


@dataclasses.dataclass
class BridgeStats:
    """Counters the gateway exports."""

    replayed: int = 0
    replay_dropped: int = 0
    bad_signatures: int = 0


def _split(frames: list[bytes]) -> list[bytes] | None:
    """``[signature, header, parent, metadata, content, *buffers]`` after the
    identities, or None if there is no delimiter."""
    try:
        i = frames.index(DELIM)
    except ValueError:
        return None
    rest = frames[i + 1 :]
    return rest if len(rest) >= 5 else None


def is_output(channel: str, parts: list[bytes]) -> bool:
    """Is this a message a client can lose without waiting forever (iopub output)?"""
    return channel == "iopub" and b'"status"' not in parts[0]


def log_send_failure(fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("gateway send to a kernel failed: %s", fut.exception())


def take_sockets(kc: Any) -> dict[str, zmq.asyncio.Socket]:
    """Take the connected sockets of an :class:`~kernelkeeper.AsyncKernelClient`'s
    running channels: their receive tasks are cancelled, the sockets stay open and
    are the caller's (``await kc.aclose()`` then ends the rest of the client).

    Call it only before anyone waits for the client's messages: one that was
    already received when the task is cancelled is dropped.
    """
    taken: dict[str, zmq.asyncio.Socket] = {}
    for name in ("iopub", *DEALERS):
        ch = getattr(kc, f"{name}_channel", None)
        sock = getattr(ch, "socket", None)
        if ch is None or sock is None or sock.closed or not ch.is_alive():
            continue
        # Channel.stop() would close the socket: detach it instead.
        ch.detach_socket()
        taken[name] = sock
    return taken


class SignedReceiver:
    """Receive loops that pass on only the messages signed with the kernel's key."""

    _session: Session
    stats: BridgeStats

    async def receive(
        self, sock: zmq.asyncio.Socket, channel: str, deliver: Callable[[str, list[bytes]], None]
    ) -> None:
        """Receive on ``sock`` until it is closed; pass verified messages to ``deliver``."""
        received = 0
        while True:
            try:
                frames = await sock.recv_multipart(copy=True)
            except zmq.ZMQError as e:
                if e.errno == zmq.ETERM or sock.closed:
                    return
                log.warning("gateway socket error on %s: %s", channel, e)
                continue
            self._dispatch(frames, channel, deliver)
            received += 1
            if received % _YIELD_EVERY == 0:
                # A receive that finds a message waiting completes without giving the
                # loop a turn: under a flood of output the WebSocket writers would
                # never run. Not a delay: just a turn for the other tasks.
                await asyncio.sleep(0)

    def _dispatch(
        self, frames: list[bytes], channel: str, deliver: Callable[[str, list[bytes]], None]
    ) -> None:
        rest = _split(frames)
        if rest is None or not self._verified(rest):
            self.stats.bad_signatures += 1
            return
        try:
            deliver(channel, rest[1:])
        except Exception:  # one bad sink must not end the receive loop
            log.exception("delivering a %s message failed", channel)

    def _verified(self, rest: list[bytes]) -> bool:
        if not self._session.key:
            return True
        return hmac.compare_digest(rest[0], self._session.sign(rest[1:5]))


class SessionHost(Protocol):
    """What a :class:`ClientSession` needs of its kernel's bridge."""

    limits: BridgeLimits
    stats: BridgeStats

    @property
    def closed(self) -> bool: ...

    def expire(self, session_id: str) -> None: ...

    async def receive(
        self, sock: zmq.asyncio.Socket, channel: str, deliver: Callable[[str, list[bytes]], None]
    ) -> None: ...


class ClientSession:
    """The zmq sockets of one client session_id, and its replay buffer."""

    def __init__(self, bridge: SessionHost, session_id: str) -> None:
        self.session_id = session_id
        self.sink: Sink | None = None
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self._bridge = bridge
        self._buffer: collections.deque[tuple[float, str, list[bytes], int]] = collections.deque()
        self._buffered = 0
        self._expiry: asyncio.TimerHandle | None = None
        self._context: zmq.asyncio.Context | None = None
        self._info: ConnectionInfo | None = None
        self._closed = False

    def open(
        self,
        context: zmq.asyncio.Context,
        info: ConnectionInfo,
        connected: dict[str, zmq.asyncio.Socket] | None = None,
    ) -> None:
        """Open the dealers, or use ``connected`` ones (already connected, sharing one
        identity: any identity unique to the session does, the kernel only needs
        shell's and stdin's to be the same). Control is opened on first use: few
        sessions send on it, and each socket costs the gateway memory per kernel."""
        self._context, self._info = context, info
        for channel in DEALERS:
            sock = (connected or {}).get(channel)
            if sock is not None:
                self._receive(channel, sock)
            elif channel != "control":
                self._receive(channel, self._dealer(channel))

    def _dealer(self, channel: str) -> zmq.asyncio.Socket:
        assert self._context is not None and self._info is not None
        sock = self._context.socket(zmq.DEALER)
        sock.linger = 0
        sock.setsockopt(zmq.IDENTITY, self.session_id.encode("utf-8"))
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        configure_client(sock, self._info)
        sock.connect(self._info.url(channel))
        return sock

    def _receive(self, channel: str, sock: zmq.asyncio.Socket) -> None:
        self.sockets[channel] = sock
        self.tasks.append(
            asyncio.get_running_loop().create_task(
                self._bridge.receive(sock, channel, self.deliver), name="kk-gw-rx"
            )
        )

    def socket(self, channel: str) -> zmq.asyncio.Socket | None:
        """The session's socket for ``channel`` (control opened now if need be); None
        once the session is closed."""
        sock = self.sockets.get(channel)
        if sock is None and not self._closed and channel in DEALERS:
            sock = self._dealer(channel)
            self._receive(channel, sock)
        return sock

    def deliver(self, channel: str, parts: list[bytes]) -> None:
        sink = self.sink
        if sink is not None:
            sink.deliver(channel, parts)
            return
        now = time.monotonic()
        size = sum(len(p) for p in parts)
        self._buffer.append((now, channel, parts, size))
        self._buffered += size
        self._trim(now)

    def _trim(self, now: float) -> None:
        """Keep the buffer within its bounds: messages past the age go; over the byte
        bound the oldest *output* goes first (iopub other than status). Replies and
        statuses are the last to go: a client that lost its reply waits forever, and
        under load a reply can be queued before output that was published earlier."""
        limits, stats = self._bridge.limits, self._bridge.stats
        buf = self._buffer
        while buf and now - buf[0][0] > limits.replay_age:
            self._buffered -= buf.popleft()[3]
            stats.replay_dropped += 1
        while self._buffered > limits.replay_bytes and buf:
            victim = next((i for i, (_, ch, parts, _) in enumerate(buf) if is_output(ch, parts)), 0)
            size = buf[victim][3]
            del buf[victim]
            self._buffered -= size
            stats.replay_dropped += 1

    def attach(self, sink: Sink) -> Sink | None:
        """Make ``sink`` this session's socket; replays what was buffered into it first.
        Returns the socket it replaces, if any."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._trim(time.monotonic())
        old, self.sink = self.sink, sink
        while self._buffer:
            _, channel, parts, size = self._buffer.popleft()
            self._buffered -= size
            self._bridge.stats.replayed += 1
            sink.deliver(channel, parts)
        return old

    def detach(self, sink: Sink) -> None:
        """``sink`` is gone: buffer from now on; close the session if nobody comes back."""
        if self.sink is not sink:
            return  # already replaced by a newer socket
        self.sink = None
        if self._bridge.closed:
            return
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(
            self._bridge.limits.replay_age, self._bridge.expire, self.session_id
        )

    def close(self) -> list[asyncio.Task[None]]:
        """Close the sockets; returns the cancelled tasks for the caller to await."""
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for task in self.tasks:
            task.cancel()
        for sock in self.sockets.values():
            sock.close()
        tasks, self.tasks, self.sockets = self.tasks, [], {}
        return tasks

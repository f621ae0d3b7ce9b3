"""One kernel's zmq side of the gateway's WebSockets.

A :class:`KernelBridge` holds one iopub SUB socket per kernel (its messages
fan out to every WebSocket of the kernel) and, per client ``session_id``, a
:class:`ClientSession`: shell, control and stdin DEALER sockets whose zmq
identity is the session id (the kernel routes a session's replies and
``input_request`` by it). A session outlives its WebSockets: a new socket
with the same session_id takes the session over, and while a session has
no socket its messages are buffered (bounded by bytes and by age) and
replayed to the next one. A session left alone longer than that is closed.

Readiness. A WebSocket is only attached once the bridge's iopub
subscription is known to be live: an ``iopub_welcome`` or the status of a
``kernel_info_request`` probe (sent on control, which a busy kernel still
answers) reached our SUB socket, and the probe was answered. After a restart
(or a death) the bridge is *not live* again: messages from clients are held
back, and sent once the new process is confirmed to reach our SUB socket,
so the first cell after a restart cannot lose its output.

Messages are passed as *parts* (see :mod:`kernelkeeper.gateway_wire`); the
kernel's signature is checked on every message we receive, and the
client's messages are signed with the kernel's key.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq
import zmq.asyncio

from .connection import ConnectionInfo
from .curve import configure_client
from .errors import KernelTimeoutError
from .gateway_wire import message_parts
from .session import DELIM, Session

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_KERNEL_GONE",
    "CLOSE_REPLACED",
    "BridgeLimits",
    "ClientSession",
    "KernelBridge",
    "Sink",
    "is_output",
]

log = logging.getLogger("kernelkeeper.gateway")

_DEALERS = ("shell", "control", "stdin")
_YIELD_EVERY = 8

#: WebSocket close codes: a newer socket with the same session_id took over...
CLOSE_REPLACED = 4000
#: ...the kernel was deleted or culled (sent after its final status)...
CLOSE_KERNEL_GONE = 4004
#: ...the gateway shuts down (or the client went away).
CLOSE_GOING_AWAY = 1001


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


def _log_send_failure(fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("gateway send to a kernel failed: %s", fut.exception())


class ClientSession:
    """The zmq sockets of one client session_id, and its replay buffer."""

    def __init__(self, bridge: KernelBridge, session_id: str) -> None:
        self.session_id = session_id
        self.sink: Sink | None = None
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self._bridge = bridge
        self._buffer: collections.deque[tuple[float, str, list[bytes], int]] = collections.deque()
        self._buffered = 0
        self._expiry: asyncio.TimerHandle | None = None

    def open(self, context: zmq.asyncio.Context, info: ConnectionInfo) -> None:
        identity = self.session_id.encode("utf-8")
        loop = asyncio.get_running_loop()
        for channel in _DEALERS:
            sock = context.socket(zmq.DEALER)
            sock.linger = 0
            sock.setsockopt(zmq.IDENTITY, identity)
            sock.setsockopt(zmq.RECONNECT_IVL, 10)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
            configure_client(sock, info)
            sock.connect(info.url(channel))
            self.sockets[channel] = sock
            self.tasks.append(
                loop.create_task(self._bridge.receive(sock, channel, self.deliver), name="kk-gw-rx")
            )

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
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for task in self.tasks:
            task.cancel()
        for sock in self.sockets.values():
            sock.close()
        tasks, self.tasks, self.sockets = self.tasks, [], {}
        return tasks


class KernelBridge:
    """The gateway's zmq sockets to one kernel, shared by all its WebSockets."""

    def __init__(
        self,
        kernel_id: str,
        info: ConnectionInfo,
        limits: BridgeLimits | None = None,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.kernel_id = kernel_id
        self.limits = limits or BridgeLimits()
        self.stats = BridgeStats()
        self.sessions: dict[str, ClientSession] = {}
        self._info = info
        self._context = context or zmq.asyncio.Context.instance()
        self._session = Session(info.key, info.signature_scheme)
        # The probe's own session id: a parent header naming it is a probe's.
        self._probe_mark = self._session.session.encode("ascii")
        self._live = asyncio.Event()
        self._probe_replied = False
        self._probe_seen = False
        self._probe_ids: set[str] = set()
        self._held: list[tuple[ClientSession, str, list[bytes]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._reaped: list[asyncio.Task[None]] = []
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_deadline = 0.0
        self._closed = False
        loop = asyncio.get_running_loop()
        # No high-water mark on our side of iopub: with one, zmq drops messages when
        # we fall behind a flood, and a lost idle status leaves a client waiting
        # forever. What we hold per client is bounded by the WebSocket send queues.
        self._iopub = self._socket(zmq.SUB, "iopub", rcvhwm=0)
        self._iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self._tasks.append(
            loop.create_task(self.receive(self._iopub, "iopub", self._fan_out), name="kk-gw-iopub")
        )
        # Probes go to control (which a busy ipykernel still answers) and to shell
        # (which every kernel answers), as jupyter_server's nudge does.
        self._probes = [self._socket(zmq.DEALER, ch) for ch in ("control", "shell")]
        for sock, ch in zip(self._probes, ("control", "shell"), strict=True):
            self._tasks.append(
                loop.create_task(self.receive(sock, ch, self._on_probe_reply), name="kk-gw-rx")
            )

    def _socket(self, kind: int, channel: str, rcvhwm: int | None = None) -> zmq.asyncio.Socket:
        sock = self._context.socket(kind)
        sock.linger = 0
        if rcvhwm is not None:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        configure_client(sock, self._info)
        sock.connect(self._info.url(channel))
        return sock

    @property
    def live(self) -> bool:
        """Is our iopub subscription confirmed for the kernel's current process?"""
        return self._live.is_set()

    # -- receiving ------------------------------------------------------------

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

    def _fan_out(self, channel: str, parts: list[bytes]) -> None:
        header, parent = parts[0], parts[1]
        if b'"iopub_welcome"' in header:
            self._probe_seen = True  # our subscription reaches the current process
            self._check_live()
            return  # the gateway's subscription, not the client's business
        if self._probe_mark in parent:
            if self._current_probe(parent):
                self._probe_seen = True
                self._check_live()
            return  # a readiness probe's status
        for cs in list(self.sessions.values()):
            cs.deliver(channel, parts)

    def _on_probe_reply(self, channel: str, parts: list[bytes]) -> None:
        if self._current_probe(parts[1]):
            self._probe_replied = True
            self._check_live()

    def _current_probe(self, parent: bytes) -> bool:
        """Is ``parent`` the header of a probe sent since the last reset? (A late answer
        to an older probe may come from the process a restart is replacing.)"""
        try:
            msg_id = json.loads(parent).get("msg_id")
        except (ValueError, AttributeError):
            return False
        return msg_id in self._probe_ids

    def _check_live(self) -> None:
        if self._probe_seen and self._probe_replied and not self._live.is_set():
            self._live.set()
            self._flush()

    # -- readiness --------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def reset(self, probe: bool = False) -> None:
        """A restart or a death: hold the clients' messages until the new process is
        confirmed to reach us. ``probe``: start probing now (the old process is gone
        already; a restart we make ourselves probes once it is over, or the old
        process would answer)."""
        self._live.clear()
        self._probe_seen = self._probe_replied = False
        self._probe_ids.clear()
        if probe:
            self.revalidate()

    def revalidate(self) -> None:
        """The kernel is (re)started: probe until it reaches our sockets, then resume."""
        self._ensure_probe()

    def _ensure_probe(self) -> asyncio.Task[None]:
        self._probe_deadline = time.monotonic() + self.limits.ready_timeout
        task = self._probe_task
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._run_probe(), name="kk-gw-probe")
            # A timeout after a restart has no waiter; it is logged in _run_probe.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._probe_task = task
        return task

    async def _run_probe(self) -> None:
        while not self._live.is_set():
            if self._closed:
                return
            remaining = self._probe_deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "kernel %s: no answer to readiness probes in %.0f s",
                    self.kernel_id,
                    self.limits.ready_timeout,
                )
                self._flush()  # do not hold clients' messages forever
                raise KernelTimeoutError(
                    f"Kernel {self.kernel_id} did not answer within {self.limits.ready_timeout:g} s"
                )
            for sock in self._probes:
                msg = self._session.msg("kernel_info_request")
                self._probe_ids.add(msg["msg_id"])
                await sock.send_multipart(self._session.serialize(msg))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._live.wait(), min(remaining, self.limits.probe_interval)
                )

    async def wait_live(self) -> None:
        """Return once the bridge is live; :class:`KernelTimeoutError` after the deadline."""
        if self._live.is_set():
            return
        task = self._probe_task
        if task is None or task.done():
            task = self._ensure_probe()
        await asyncio.shield(task)

    def drop_held(self) -> None:
        """Forget the clients' messages held for a kernel that is dead for good."""
        self._held.clear()

    # -- sessions ---------------------------------------------------------------

    def session(self, session_id: str) -> ClientSession:
        """The session of ``session_id``, opened if new."""
        cs = self.sessions.get(session_id)
        if cs is None:
            cs = ClientSession(self, session_id)
            cs.open(self._context, self._info)
            self.sessions[session_id] = cs
        return cs

    def expire(self, session_id: str) -> None:
        """Close a session that has had no socket for ``replay_age`` seconds."""
        cs = self.sessions.get(session_id)
        if cs is not None and cs.sink is None:
            del self.sessions[session_id]
            self._reap(cs.close())

    def _reap(self, tasks: list[asyncio.Task[None]]) -> None:
        self._reaped = [t for t in self._reaped if not t.done()] + tasks

    def send(self, cs: ClientSession, channel: str, parts: list[bytes]) -> None:
        """Sign ``parts`` with the kernel's key and send them on ``cs``'s socket (held
        while the bridge is not live)."""
        if not self._live.is_set():
            self._held.append((cs, channel, parts))
            return
        self._send(cs, channel, parts)

    def _send(self, cs: ClientSession, channel: str, parts: list[bytes]) -> None:
        sock = cs.sockets.get(channel)
        if sock is None:
            return  # the session was closed meanwhile
        frames = [DELIM, self._session.sign(parts[:4]), *parts]
        # zmq queues while the kernel is away (up to its high-water mark), so this
        # completes at once; a failure is logged by the callback, not lost.
        fut: Any = sock.send_multipart(frames)
        fut.add_done_callback(_log_send_failure)

    def _flush(self) -> None:
        held, self._held = self._held, []
        for cs, channel, parts in held:
            self._send(cs, channel, parts)

    def announce(self, status: str) -> None:
        """Tell every session ``status`` (restarting, dead) as jupyter_server does: an
        iopub status message of the gateway's own."""
        msg = self._session.msg("status", {"execution_state": status})
        parts = message_parts(msg)
        for cs in list(self.sessions.values()):
            cs.deliver("iopub", parts)

    # -- closing ----------------------------------------------------------------

    async def drain(self, timeout: float = 0.05) -> None:
        """Deliver what the kernel already sent on iopub (its final status), waiting at
        most ``timeout`` s for bytes still in flight."""
        task = self._tasks[0] if self._tasks else None
        if task is None or self._iopub.closed:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        while await self._iopub.poll(int(timeout * 1000)):
            frames = await self._iopub.recv_multipart()
            self._dispatch(frames, "iopub", self._fan_out)

    async def aclose(self) -> None:
        """Close every socket and await every task of the bridge."""
        self._closed = True
        tasks = list(self._tasks)
        if self._probe_task is not None:
            tasks.append(self._probe_task)
        for task in tasks:
            task.cancel()
        for cs in list(self.sessions.values()):
            tasks += cs.close()
        self.sessions.clear()
        self._held.clear()
        tasks += self._reaped
        self._iopub.close()
        for sock in self._probes:
            sock.close()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks, self._reaped, self._probe_task = [], [], None

    def sink_count(self) -> int:
        return sum(1 for cs in self.sessions.values() if cs.sink is not None)

    def close_sinks(self, how: Callable[[Sink], None]) -> None:
        """Call ``how(sink)`` for every attached socket."""
        for cs in list(self.sessions.values()):
            if cs.sink is not None:
                how(cs.sink)

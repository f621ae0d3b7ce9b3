"""The client's sockets: one reader per channel, bounded queues, the heartbeat.

Each :class:`Channel` owns one kernel socket, read by a callback on the
loop's reader for the socket's descriptor: every message waiting is taken in
one wake-up, parsed once and handed to the client's routing in the same loop
iteration (no future and no task step per message). What
nobody claimed waits in the channel's queue for ``get_msg`` (the
jupyter_client way, used by nbclient and papermill). Queues are bounded by
count *and* by bytes, so a client that never reads iopub cannot be made to
hold a kernel's whole output.

Everything here runs on the client's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, cast

import zmq
import zmq.asyncio

from .connection import ConnectionInfo
from .curve import configure_client
from .errors import NotRunningError
from .msgqueue import MessageQueue, QueuedReader
from .session import Message, Session


@dataclasses.dataclass
class ChannelLink:
    """What the channels of one client share: where to connect, how to sign, and
    whom to tell. The client owns it (and updates it when it loads new connection
    info); the channels never look into the client itself."""

    context: zmq.asyncio.Context
    session: Session
    #: Where the kernel listens; None until the client has connection info.
    connection_info: ConnectionInfo | None
    #: Gets every parsed message with its wire size (the client's routing).
    deliver: Callable[[Channel, Message, int], None]
    #: Raises KernelDiedError when the kernel is known to be dead.
    check_alive: Callable[[], None] = lambda: None
    #: Called when a channel starts (on the loop), also when started on first use.
    on_start: Callable[[], None] = lambda: None
    #: The heartbeat answered.
    on_beat: Callable[[], None] = lambda: None
    #: The heartbeat missed this many beats in a row.
    on_missed: Callable[[int], None] = lambda missed: None

    def info(self, channel: str) -> ConnectionInfo:
        """The connection info, or NotRunningError when there is none yet."""
        if self.connection_info is None:
            raise NotRunningError(
                f"Cannot connect the {channel} channel: no connection info "
                "(call load_connection_file() or load_connection_info() first)"
            )
        return self.connection_info


__all__ = [
    "Channel",
    "ChannelLink",
    "HBChannel",
    "MessageQueue",
    "MsgId",
    "TaskOwner",
    "connect_socket",
]

log = logging.getLogger("kernelkeeper.client")

_SOCKET_TYPES = {
    "shell": zmq.DEALER,
    "control": zmq.DEALER,
    "stdin": zmq.DEALER,
    "iopub": zmq.SUB,
}


def connect_socket(
    context: zmq.Context[Any], info: ConnectionInfo, channel: str, identity: bytes | None = None
) -> Any:
    """A zmq socket of ``context`` connected to ``channel`` of the kernel in ``info``
    (jupyter_client's ``connect_iopub`` and friends; the caller closes it)."""
    sock = context.socket(_SOCKET_TYPES.get(channel, zmq.REQ))  # hb: REQ
    sock.linger = 1000
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    if channel == "iopub":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    configure_client(sock, info)
    sock.connect(info.url(channel))
    return sock


class RawSockets:
    """jupyter_client's ``connect_shell``, ``connect_iopub``, ``connect_stdin``,
    ``connect_control`` and ``connect_hb``: each a zmq socket connected to that
    channel, the caller's to close (jupyter_server's WebSocket handlers use
    them). The host says how, in ``_connect``."""

    def _connect(self, channel: str, identity: bytes | None) -> Any:
        raise NotImplementedError

    def connect_shell(self, identity: bytes | None = None) -> Any:
        """A zmq socket connected to the shell channel."""
        return self._connect("shell", identity)

    def connect_iopub(self, identity: bytes | None = None) -> Any:
        """A zmq socket subscribed to the iopub channel."""
        return self._connect("iopub", identity)

    def connect_stdin(self, identity: bytes | None = None) -> Any:
        """A zmq socket connected to the stdin channel."""
        return self._connect("stdin", identity)

    def connect_control(self, identity: bytes | None = None) -> Any:
        """A zmq socket connected to the control channel."""
        return self._connect("control", identity)

    def connect_hb(self, identity: bytes | None = None) -> Any:
        """A zmq REQ socket connected to the heartbeat."""
        return self._connect("hb", identity)


# The channels' hot path calls pyzmq's compiled socket methods with plain
# int flags: its Python layer (send_multipart, recv_multipart) builds enum
# flag objects and asks for RCVMORE on every frame, which costs more than
# the frame itself.
_zsend = zmq.backend.Socket.send
_zrecv = zmq.backend.Socket.recv
_POLLIN, _POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE) | _NOBLOCK


def _events(sock: zmq.Socket[bytes]) -> int:
    """The socket's ready events (also takes in what zmq's I/O thread signalled)."""
    return cast(int, sock.getsockopt(zmq.EVENTS))


def _recv_frames(sock: zmq.Socket[bytes]) -> list[bytes]:
    # A multipart message arrives whole: once its first frame is there, all
    # are. Copied straight into bytes: a zero-copy Frame plus its .bytes would
    # hold each large frame twice until freed, and under a flood of big
    # outputs that doubles the peak memory the queue's byte bound promises.
    frames = [_zrecv(sock, _NOBLOCK, True)]
    while sock.getsockopt(zmq.RCVMORE):
        frames.append(_zrecv(sock, _NOBLOCK, True))
    return frames


def _send_frames_now(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    # zmq queues a multipart message whole or not at all: only the first frame can fail (Again).
    last = len(frames) - 1
    for i, f in enumerate(frames):
        _zsend(sock, f, _MORE if i < last else _NOBLOCK)


class MsgId(str):
    """The msg_id of a request that was sent.

    A plain ``str``; awaiting it gives the same id, so code written for either
    flavour of jupyter_client's async client (``kc.execute(...)`` or
    ``await kc.execute(...)``) works unchanged.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, str]:
        return str(self)
        yield  # pragma: no cover - makes this a generator


class TaskOwner:
    """Owns one background task: ``stop`` cancels it, ``aclose`` also awaits it."""

    _task: asyncio.Task[None] | None = None

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def aclose(self) -> None:
        """Stop and wait until the task has finished."""
        task = self._task
        self.stop()
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def is_alive(self) -> bool:
        return self._task is not None and not self._task.done()


# The old private name, for code that subclassed it.
_TaskOwner = TaskOwner


class Channel(QueuedReader, TaskOwner):
    """One kernel socket plus the queue of its messages nobody else claimed.

    Mirrors jupyter_client's async channel: ``await get_msg(timeout)`` raises
    :class:`queue.Empty` when nothing arrives in time.
    """

    link: ChannelLink
    #: Most unread messages kept; see :meth:`put`.
    max_queued = 1000
    #: Most bytes (received frame sizes) of unread messages kept; see :meth:`put`.
    max_queued_bytes = 64 * 1024 * 1024

    def __init__(self, link: ChannelLink, name: str) -> None:
        self.link = link
        self.name = name
        self.socket: zmq.asyncio.Socket | None = None
        # A plain view of ``socket`` (the same zmq handle): the channel reads
        # and writes it without blocking from its reader callback, so
        # pyzmq's per-call futures never come into play.
        self._zsock: zmq.Socket[bytes] | None = None
        self._fd: int | None = None
        # Sends the socket refused for now (its high-water mark): sent, in
        # order, when it can take them again.
        self._outbox: collections.deque[list[bytes]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.queue = MessageQueue()
        #: Messages dropped because nobody read the queue (oldest go first).
        self.overflowed = 0
        #: Their summed frame sizes.
        self.overflowed_bytes = 0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Channel {self.name} {'running' if self.is_alive() else 'stopped'}>"

    @property
    def session(self) -> Session:
        return self.link.session

    def start(self) -> None:
        """Connect the socket and start receiving (on the running loop)."""
        if self._task is not None:
            return
        info = self.link.info(self.name)
        sock = self.link.context.socket(_SOCKET_TYPES[self.name])
        sock.linger = 1000 if self.name == "control" else 0
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        if self.name == "iopub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            # stdin must share the shell's identity: the kernel routes
            # input_request to the peer that sent the execute_request.
            sock.setsockopt(zmq.IDENTITY, self.link.session.bsession)
        configure_client(sock, info)
        sock.connect(info.url(self.name))
        self.socket = sock
        loop = self._loop = asyncio.get_running_loop()
        zsock = self._zsock = zmq.Socket.shadow(sock.underlying)
        self._fd = zsock.FD
        loop.add_reader(self._fd, self._on_events)
        self._task = loop.create_task(self._park(), name=f"kk-{self.name}")
        # The descriptor is edge-triggered: look once for what came before it was watched.
        loop.call_soon(self._on_events)
        self.link.on_start()

    def ensure_started(self) -> None:
        """Start the channel if it is not running: jupyter_client creates a
        channel's socket on first use, and code written for it relies on that.

        Needs the running loop; without one a stopped channel raises
        :class:`~kernelkeeper.errors.NotRunningError`.
        """
        if self.socket is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise NotRunningError(f"The {self.name} channel is not running") from None
        self.start()

    def stop(self) -> None:
        """Stop reading and close the socket (no await needed)."""
        self._unwatch()
        super().stop()
        sock, self.socket = self.socket, None
        self._zsock = None
        self._outbox.clear()
        if sock is not None:
            sock.close()

    def detach_socket(self) -> zmq.asyncio.Socket | None:
        """Stop reading and hand over the connected socket, open (None if not started).

        Our reader is removed at once, before the caller can watch the socket
        itself: the loop keeps one reader per descriptor, so a later removal
        would take the new owner's away. What arrived and was not read stays
        in the socket for the new owner.
        """
        self._unwatch()
        TaskOwner.stop(self)
        sock, self.socket = self.socket, None
        self._zsock = None
        self._outbox.clear()
        return sock

    def _unwatch(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)

    async def _park(self) -> None:
        # The channel's task only marks it running (``is_alive``); the reader
        # callback does the work. Cancelled by ``stop`` or by the loop's end.
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self._unwatch()

    #: Most messages taken in one wake-up before the rest of the loop gets a turn.
    batch = 64

    def _on_events(self) -> None:
        # Called by the loop when the socket's descriptor signals (and after
        # sends, which may consume that signal: zmq's descriptor is
        # edge-triggered, so everything waiting must be taken now).
        self._drain()

    def _drain(self) -> None:
        sock = self._zsock
        if sock is None:
            return
        try:
            if self._outbox:
                self._flush(sock)
            for _ in range(self.batch):
                if not _events(sock) & _POLLIN:
                    return
                self._handle(_recv_frames(sock))
                if self._zsock is not sock:  # a hook stopped the channel
                    return
        except zmq.ZMQError as e:
            if e.errno == zmq.ETERM or sock.closed:
                self._unwatch()
                return
            log.warning("%s socket error: %s", self.name, e)
        # A burst (or an error): let the rest of the loop run, then go on.
        assert self._loop is not None
        self._loop.call_soon(self._on_events)

    def _handle(self, frames: list[bytes]) -> None:
        msg = self.link.session.feed(frames)
        if msg is not None:
            nbytes = sum(map(len, frames))
            try:
                self.link.deliver(self, msg, nbytes)
            except Exception:  # a failing user hook must not stop the channel
                log.exception("Error handling a %s message", self.name)

    def send(self, msg: Mapping[str, Any]) -> None:
        """Sign and send a message dict on this channel (started first if need be)."""
        self.ensure_started()
        self.send_frames(self.link.session.serialize(msg))

    def send_frames(self, frames: list[bytes]) -> None:
        """Send signed frames on this channel, which must be running."""
        sock = self._zsock
        if sock is None:
            raise NotRunningError(f"The {self.name} channel is not running")
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self._loop:
            self._send_frames(sock, frames)
        else:
            # Called outside the socket's loop (papermill calls kernel_info()
            # with no loop running): the socket is that loop's alone, so the
            # send goes out, in order, as soon as the loop runs.
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._send_frames, sock, frames)

    def _send_frames(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        if sock is not self._zsock:  # stopped (and maybe restarted) meanwhile
            return
        if self._outbox:
            self._outbox.append(frames)  # behind those waiting, in order
        else:
            try:
                _send_frames_now(sock, frames)
            except zmq.Again:
                self._outbox.append(frames)
        # The send may have taken the descriptor's signal of an arrival.
        if _events(sock) & _POLLIN and self._loop is not None:
            self._loop.call_soon(self._on_events)

    def _flush(self, sock: zmq.Socket[bytes]) -> None:
        box = self._outbox
        while box and _events(sock) & _POLLOUT:
            _send_frames_now(sock, box[0])
            box.popleft()


class HBChannel(TaskOwner):
    """Pings the kernel's heartbeat socket; notices a kernel that stopped beating.

    A ping unanswered for ``time_to_dead`` seconds is a missed beat;
    ``on_dead`` callbacks (run on the loop) receive the seconds since the last
    beat after each miss. ``missed`` counts the misses in a row.
    """

    def __init__(self, link: ChannelLink, time_to_dead: float = 1.0) -> None:
        self.link = link
        self.time_to_dead = time_to_dead
        self._beating = True
        self._paused = False
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.on_dead: list[Callable[[float], Any]] = []
        #: Beats missed in a row (0 after an answer).
        self.missed = 0

    def start(self) -> None:
        """Start pinging (on the running loop)."""
        if self._task is None:
            self.link.info("hb")
            self.missed = 0
            self._last = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kk-hb")

    def pause(self) -> None:
        self._paused = True

    def unpause(self) -> None:
        self._paused = False
        self._wake.set()

    def is_beating(self) -> bool:
        """Did the kernel answer the last ping (and is the channel running)?"""
        return self.is_alive() and self._beating and not self._paused

    def call_handlers(self, since_last_heartbeat: float) -> None:
        for cb in list(self.on_dead):
            try:
                cb(since_last_heartbeat)
            except Exception:
                log.exception("Heartbeat callback %r failed", cb)

    def _socket(self) -> zmq.asyncio.Socket:
        info = self.link.info("hb")
        sock = self.link.context.socket(zmq.REQ)
        sock.linger = 0
        configure_client(sock, info)
        sock.connect(info.url("hb"))
        return sock

    async def _run(self) -> None:
        sock = self._socket()
        try:
            while True:
                if self._paused:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                started = time.monotonic()
                await sock.send(b"ping")
                if await sock.poll(int(self.time_to_dead * 1000)):
                    await sock.recv()
                    self._beating = True
                    self.missed = 0
                    self._last = time.monotonic()
                    self.link.on_beat()
                    # The beat period: wait out the rest of time_to_dead.
                    await asyncio.sleep(max(0.0, self.time_to_dead - (self._last - started)))
                    continue
                # No answer: a REQ socket is stuck after a lost reply; start over.
                sock.close()
                sock = self._socket()
                self._beating = False
                self.missed += 1
                self.call_handlers(time.monotonic() - self._last)
                self.link.on_missed(self.missed)
        finally:
            sock.close()

"""The client's sockets: one receive task per channel, bounded queues, the heartbeat.

Each :class:`Channel` owns one kernel socket and the task that receives on
it; every message is parsed once and handed to the client's routing. What
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
import queue
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any

import zmq
import zmq.asyncio

from .connection import ConnectionInfo
from .curve import configure_client
from .errors import KernelDiedError, NotRunningError
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


class MessageQueue:
    """A FIFO of messages with their wire sizes; ``get`` waits, the rest does not.

    The subset of :class:`asyncio.Queue` that callers use (``empty``,
    ``qsize``, ``get_nowait`` raising :class:`asyncio.QueueEmpty`, ``get``),
    plus ``nbytes``: the summed frame sizes of what is queued. A ``get``
    cancelled after it was woken passes the wake-up on, so a message is never
    lost to a timeout.
    """

    def __init__(self) -> None:
        self._items: collections.deque[tuple[Message, int]] = collections.deque()
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()
        #: Summed frame sizes of the queued messages.
        self.nbytes = 0

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put(self, msg: Message, nbytes: int = 0) -> None:
        self._items.append((msg, nbytes))
        self.nbytes += nbytes
        self._wake_next()

    def popleft(self) -> tuple[Message, int]:
        """Remove and return the oldest ``(message, nbytes)``; IndexError when empty."""
        msg, n = self._items.popleft()
        self.nbytes -= n
        return msg, n

    def peek_last(self) -> Message | None:
        """The newest queued message, left in place."""
        return self._items[-1][0] if self._items else None

    def get_nowait(self) -> Message:
        if not self._items:
            raise asyncio.QueueEmpty
        return self.popleft()[0]

    async def get(self) -> Message:
        while not self._items:
            fut = asyncio.get_running_loop().create_future()
            self._getters.append(fut)
            try:
                await fut
            except BaseException:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(fut)
                if not fut.cancelled():  # woken, then cancelled: wake the next getter
                    self._wake_next()
                raise
        return self.popleft()[0]

    def fail_waiters(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every waiting ``get`` (nothing will come); queued messages stay."""
        getters, self._getters = self._getters, collections.deque()
        for fut in getters:
            if not fut.done():
                fut.set_exception(make_error())
                fut.exception()  # retrieved: a getter cancelled meanwhile must not log it

    def _wake_next(self) -> None:
        while self._getters and self._items:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)
                return


class Channel(TaskOwner):
    """One kernel socket plus the queue of its messages nobody else claimed.

    Mirrors jupyter_client's async channel: ``await get_msg(timeout)`` raises
    :class:`queue.Empty` when nothing arrives in time.
    """

    #: Most unread messages kept; see :meth:`put`.
    max_queued = 1000
    #: Most bytes (received frame sizes) of unread messages kept; see :meth:`put`.
    max_queued_bytes = 64 * 1024 * 1024

    def __init__(self, link: ChannelLink, name: str) -> None:
        self.link = link
        self.name = name
        self.socket: zmq.asyncio.Socket | None = None
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
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._receive(sock), name=f"kk-{self.name}")
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
        """Cancel the receive task and close the socket (no await needed)."""
        super().stop()
        sock, self.socket = self.socket, None
        if sock is not None:
            sock.close()

    async def _receive(self, sock: zmq.asyncio.Socket) -> None:
        session = self.link.session
        deliver = self.link.deliver
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError as e:
                if e.errno == zmq.ETERM or sock.closed:
                    return
                log.warning("%s socket error: %s", self.name, e)
                continue
            msg = session.feed(frames)
            if msg is not None:
                try:
                    deliver(self, msg, sum(len(f) for f in frames))
                except Exception:  # a failing user hook must not kill the channel
                    log.exception("Error handling a %s message", self.name)

    def put(self, msg: Message, nbytes: int = 0) -> None:
        """Queue a message for ``get_msg``; past ``max_queued`` messages or
        ``max_queued_bytes`` bytes the oldest are dropped (and counted).

        An unread queue must not grow without bound in a long-lived client
        (jupyter_client's sockets drop at their 1000-message high-water mark;
        bytes matter too: a cell printing gigabytes must not fill our memory).
        The newest message is always kept, however large.
        """
        q = self.queue
        q.put(msg, nbytes)
        while q.qsize() > 1 and (q.qsize() > self.max_queued or q.nbytes > self.max_queued_bytes):
            _, n = q.popleft()
            self.overflowed += 1
            self.overflowed_bytes += n
            if self.overflowed == 1:
                log.warning(
                    "%s queue full (%d unread messages, %d bytes); dropping the oldest",
                    self.name,
                    q.qsize(),
                    q.nbytes,
                )

    def send(self, msg: Mapping[str, Any]) -> None:
        """Sign and send a message dict on this channel (started first if need be)."""
        self.ensure_started()
        assert self.socket is not None
        frames = self.link.session.serialize(msg)
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self._loop:
            self.socket.send_multipart(frames)
        else:
            # Called outside the socket's loop (papermill calls kernel_info()
            # with no loop running): the socket is that loop's alone, so the
            # send goes out, in order, as soon as the loop runs.
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._send_frames, self.socket, frames)

    @staticmethod
    def _send_frames(sock: zmq.asyncio.Socket, frames: list[bytes]) -> None:
        if not sock.closed:
            sock.send_multipart(frames)

    async def get_msg(self, timeout: float | None = None, *, block: bool = True) -> Message:
        """The next queued message; :class:`queue.Empty` after ``timeout`` seconds.

        A message already queued is returned even with ``timeout=0`` (or
        ``block=False``, which is the same). A channel never started is started
        first, as jupyter_client's are on first use. When the
        kernel is known to be dead and nothing is queued, nothing more will
        come, so this does not wait: with a ``timeout`` it raises
        :class:`queue.Empty` at once (the jupyter_client idiom then asks
        ``is_alive()``, and nbclient raises its DeadKernelError), without one
        :class:`~kernelkeeper.errors.KernelDiedError`. A wait under way when
        the kernel dies ends the same way; one under way when the channels
        close raises :class:`~kernelkeeper.errors.NotRunningError`.
        """
        q = self.queue
        if not block:
            timeout = 0
        if not q.empty():
            return q.get_nowait()
        try:
            self.link.check_alive()
            self.ensure_started()
            if timeout is None:
                return await q.get()
            if timeout <= 0:
                raise queue.Empty
            return await asyncio.wait_for(q.get(), timeout)
        except asyncio.TimeoutError:
            raise queue.Empty from None
        except KernelDiedError:
            if timeout is None:
                raise
            raise queue.Empty from None

    async def get_msgs(self) -> list[Message]:
        """All queued messages, without waiting."""
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out

    async def msg_ready(self) -> bool:
        """Is a message queued?"""
        return not self.queue.empty()


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

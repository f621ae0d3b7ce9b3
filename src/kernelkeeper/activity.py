"""Per-kernel activity read from iopub by the multi-kernel manager itself, and the
manager's record of each kernel (:class:`KernelRecord`).

One SUB socket per kernel, an asyncio pyzmq socket on the manager's loop (no
thread per kernel), with one receive task. Every verified message moves
``last_activity``; status messages set the execution state. A restart keeps
the ports, and zmq reconnects the socket by itself;
the busy/idle of a kernel_info probe is not counted as activity; :meth:`follow` reconnects
when the address did change (``restart_kernel(newports=True)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from .channels import connect_socket
from .client import AsyncKernelClient
from .connection import ConnectionInfo
from .culling import KernelActivityView
from .curve import configure_client
from .events import KernelEvent
from .jupyter_session import JupyterSession
from .manager import AsyncKernelManager
from .session import DELIM, Session
from .states import KernelState

__all__ = [
    "KernelActivity",
    "KernelRecord",
    "Tombstone",
    "connect_socket",
    "drain_socket",
    "iso_utc",
    "resolve",
]

S = KernelState

log = logging.getLogger("kernelkeeper.activity")


def iso_utc(t: float) -> str:
    """``t`` (seconds since the epoch) as jupyter_server writes it: ISO 8601, UTC, ``Z``."""
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KernelActivity:
    """The execution state and last activity of one kernel, seen on its iopub."""

    def __init__(self, context: zmq.asyncio.Context | None = None) -> None:
        self._context = context or zmq.asyncio.Context.instance()
        self.started = time.time()
        self.last_activity = self.started
        #: The last ``execution_state`` of a status message (None: none seen yet).
        self.status: str | None = None
        self.messages = 0
        #: ipykernel confirmed our subscription (its iopub_welcome arrived).
        self.subscribed = False
        self._last_session: str | None = None
        # The sessions of processes gone by a restart: their late messages are not ours.
        self._stale: set[str] = set()
        self._info: ConnectionInfo | None = None
        self._session: Session | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._cancelled: list[asyncio.Task[None]] = []  # to be awaited by aclose()
        self._taps: list[Callable[[list[bytes]], None]] = []

    def tap(self, callback: Callable[[list[bytes]], None]) -> Callable[[], None]:
        """Hand every verified iopub message to ``callback`` too, as its parts
        ``[header, parent, metadata, content, *buffers]``; returns the undo.

        The gateway's bridge reads a kernel's iopub through this subscription
        rather than a second one of its own: each zmq connection costs the
        process ~30 KiB, and each message would be verified twice.
        """
        self._taps.append(callback)

        def untap() -> None:
            with contextlib.suppress(ValueError):
                self._taps.remove(callback)

        return untap

    def touch(self) -> None:
        """Count as activity now (a start, a restart, a client request)."""
        self.last_activity = time.time()

    def watch(self, info: ConnectionInfo) -> None:
        """Subscribe to the iopub of the kernel in ``info`` (on the running loop)."""
        self.follow(info)

    def follow(self, info: ConnectionInfo) -> None:
        """After a restart: keep the subscription if the address is the same, else move it."""
        if (
            self._sock is not None
            and self._info is not None
            and self._info.url("iopub") == info.url("iopub")
            and self._info.key == info.key
        ):
            return
        self._close_socket()
        self._info = info
        self._session = Session(info.key, info.signature_scheme)
        sock = self._context.socket(zmq.SUB)
        sock.linger = 0
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        # No receive limit: past zmq's default of 1000 queued messages a burst of
        # output would drop messages here, its final idle status among them.
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        configure_client(sock, info)
        sock.connect(info.url("iopub"))
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._receive(sock), name="kk-activity")

    def reset(self) -> None:
        """A new process (restart): forget the old one's status until the new one speaks.

        Each kernel process signs its iopub with a session id of its own: once a
        new one appears, late messages of the old process (its busy for the
        shutdown_request) are dropped.
        """
        self.status = None
        self.touch()

    async def _receive(self, sock: zmq.asyncio.Socket) -> None:
        session = self._session
        assert session is not None
        received = 0
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError as e:
                if e.errno == zmq.ETERM or sock.closed:
                    return
                log.warning("activity socket error: %s", e)
                continue
            self._handle(session, frames)
            received += 1
            if received % 8 == 0:
                # A receive that finds a message waiting completes without giving
                # the loop a turn: under a flood of output, the taps' consumers
                # (a gateway's WebSocket writers) would never run.
                await asyncio.sleep(0)

    def _handle(self, session: Session, frames: list[bytes]) -> None:
        msg = session.feed(frames)
        if msg is None:
            return  # forged or malformed: not activity
        if self._taps:
            parts = frames[frames.index(DELIM) + 2 :]
            for tap in list(self._taps):
                try:
                    tap(parts)
                except Exception:  # one bad listener must not end the subscription
                    log.exception("iopub tap %r failed", tap)
        if msg["msg_type"] == "iopub_welcome":
            self.subscribed = True
            return  # our own subscription, not the kernel doing anything
        session_id = msg["header"].get("session")
        if session_id in self._stale:
            return
        if session_id != self._last_session:
            if self._last_session is not None:
                self._stale.add(self._last_session)  # a new process: the old one is gone
                self.status = None
            self._last_session = session_id
        if (
            msg["msg_type"] == "status"
            and msg["parent_header"].get("msg_type") == "kernel_info_request"
        ):
            return  # a readiness probe (ours, a gateway's) is not work
        self.messages += 1
        self.last_activity = time.time()
        if msg["msg_type"] == "status":
            state = msg["content"].get("execution_state")
            if isinstance(state, str):
                self.status = state

    def _close_socket(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            self._cancelled.append(task)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    async def aclose(self, drain: float = 0.05) -> None:
        """Close the socket and wait for the receive task to end.

        With taps, what the kernel sent last (its final status) is handed to
        them first: whatever comes within ``drain`` seconds.
        """
        sock, session = self._sock, self._session
        if self._taps and sock is not None and session is not None:
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await drain_socket(sock, lambda frames: self._handle(session, frames), drain)
        self._close_socket()
        tasks, self._cancelled = self._cancelled, []
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def drain_socket(
    sock: zmq.asyncio.Socket, handle: Callable[[list[bytes]], None], drain: float = 0.05
) -> None:
    """Hand ``handle`` what ``sock`` has queued and whatever comes within ``drain``
    seconds of the last message, for at most ``20 * drain`` seconds in all: a
    kernel still flooding its iopub must not hold a close up."""
    deadline = time.monotonic() + 20 * drain
    with contextlib.suppress(zmq.ZMQError):
        while await sock.poll(int(drain * 1000)) and time.monotonic() < deadline:
            handle(await sock.recv_multipart())


def resolve(fut: asyncio.Future[None], error: BaseException | None = None) -> None:
    """Settle ``fut`` once: with ``error`` (an Exception), cancelled (any other), or None."""
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    elif isinstance(error, Exception):
        fut.set_exception(error)
    else:
        fut.cancel()


def _new_future() -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # A failure nobody awaits (no caller looked at ready) is not an asyncio warning.
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


@dataclasses.dataclass
class Tombstone:
    """What is left of a culled kernel until it is forgotten."""

    kernel_name: str
    reason: str
    time: float
    last_activity: float


class KernelRecord:
    """One kernel of the multi-kernel manager: its manager, activity, clients and tasks."""

    def __init__(self, kernel_id: str, kernel_name: str) -> None:
        self.kernel_id = kernel_id
        self.kernel_name = kernel_name
        self.km: AsyncKernelManager | None = None
        self.activity = KernelActivity()
        self.clients: weakref.WeakSet[AsyncKernelClient] = weakref.WeakSet()
        self.extra_connections = 0
        self.ending = False  # shutdown_kernel/shutdown_all took over a start
        self.start_done = asyncio.Event()
        #: jupyter_client's ``km.ready``: resolved when the start, or the restart or
        #: shutdown that followed it, is over (failed with its error).
        self.ready: asyncio.Future[None] = _new_future()
        #: The error of a pending-kernels start that failed (the record stays listed).
        self.start_error: BaseException | None = None
        self.start_task: asyncio.Task[None] | None = None  # pending kernels: the start
        self.stop_task: asyncio.Task[None] | None = None  # pending kernels: the shutdown
        self.restart_reasons: list[str] = []  # restarts we asked for, not yet seen
        self._ready_task: asyncio.Task[Any] | None = None
        self.listener: Callable[[KernelEvent], None] | None = None
        #: A pool hit's connected client, not handed out yet (not a connection).
        self.spare_client: AsyncKernelClient | None = None

    @property
    def start_pending(self) -> bool:
        """Is the kernel's start not over yet (pending kernels)?"""
        return not self.start_done.is_set()

    def new_ready(self) -> asyncio.Future[None]:
        """A fresh :attr:`ready` for an operation that begins (a restart, a shutdown)."""
        self.ready = _new_future()
        self.publish()
        return self.ready

    def publish(self) -> None:
        """Put jupyter_client's ``ready`` and ``session`` on the kernel's manager.

        Code written for jupyter_client reads them from ``get_kernel(id)``;
        they live here until :class:`AsyncKernelManager` has them itself.
        """
        km = self.km
        if km is None:
            return
        km.ready = self.ready  # type: ignore[attr-defined]
        info = km.connection_info
        if info is not None and getattr(km, "session", None) is None:
            km.session = JupyterSession(Session(info.key, info.signature_scheme))  # type: ignore[attr-defined]

    @property
    def connections(self) -> int:
        return self.extra_connections + sum(1 for c in list(self.clients) if c.channels_running)

    def execution_state(self) -> str:
        km = self.km
        if km is None:
            return "starting"
        s = km.state
        if s in (S.STARTING, S.IDLE, S.BUSY):
            # Our own subscription is the authority on busy/idle. The manager's
            # state also moves on the status of readiness probes (and of a process
            # gone by a restart), and ipykernel's "starting" says nothing once it
            # has answered us.
            status = self.activity.status
            if status in ("idle", "busy"):
                return str(status)
            return "starting" if s is S.STARTING else "idle"
        if s is S.NOT_STARTED:
            return "starting"
        return str(s)

    def ensure_ready(self, timeout: float | None) -> asyncio.Task[Any]:
        """One readiness probe at a time (after a start or any restart)."""
        task = self._ready_task
        if task is None or task.done():
            assert self.km is not None
            task = asyncio.get_running_loop().create_task(
                self.km.wait_ready(timeout), name=f"kk-ready-{self.kernel_id[:8]}"
            )
            # Retrieve a failure nobody awaits (an autorestart's probe) so it is not logged.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._ready_task = task
        return task

    async def close_spare(self) -> None:
        kc, self.spare_client = self.spare_client, None
        if kc is not None:
            await kc.aclose()

    async def aclose(self) -> None:
        await self.close_spare()
        task, self._ready_task = self._ready_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.km is not None and self.listener is not None:
            self.km.remove_event_listener(self.listener)
        await self.activity.aclose()

    def model(self) -> dict[str, Any]:
        return {
            "id": self.kernel_id,
            "name": self.kernel_name,
            "last_activity": iso_utc(self.activity.last_activity),
            "execution_state": self.execution_state(),
            "connections": self.connections,
        }

    def view(self) -> KernelActivityView:
        return KernelActivityView(
            self.kernel_id,
            self.kernel_name,
            self.execution_state(),
            self.activity.last_activity,
            self.connections,
        )

"""One kernel's zmq side of the gateway's WebSockets.

A :class:`KernelBridge` reads the kernel's iopub (its messages fan out to
every WebSocket of the kernel) through the multi-kernel manager's own
subscription (:meth:`KernelActivity.tap
<kernelkeeper.activity.KernelActivity.tap>`; a SUB socket of its own when
made without one) and holds, per client ``session_id``, a
:class:`ClientSession` (:mod:`kernelkeeper.gateway_session`): shell, stdin
and, once used, control DEALER sockets that share a zmq identity of their own
(the kernel routes a session's replies and ``input_request`` by it). A
session outlives its WebSockets: a new socket
with the same session_id takes the session over, and while a session has
no socket its messages are buffered (bounded by bytes and by age) and
replayed to the next one. A session left alone longer than that is closed.

Readiness (:mod:`kernelkeeper.gateway_readiness`). A WebSocket is only
attached once the bridge's iopub subscription is known to be live. After a
restart (or a death) the bridge is *not live* again: messages from clients
are held back, and sent once the new process is confirmed to reach the
subscription, so the first cell after a restart cannot lose its output.

A bridge made for a new kernel (:meth:`GatewayCore.prepare_bridge
<kernelkeeper.gateway_core.GatewayCore.prepare_bridge>`) instead *adopts* the
sockets of a client that was just proven ready (a warm pool's, or one probed
while the POST is answered): it is live at once, and its first session uses
that client's connected dealers, so the WebSocket's first request waits for
no connection. Its own probe sockets are made on the first restart.

Messages are passed as *parts* (see :mod:`kernelkeeper.gateway_wire`); the
kernel's signature is checked on every message we receive, and the
client's messages are signed with the kernel's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from .activity import KernelActivity, drain_socket
from .connection import ConnectionInfo
from .curve import configure_client
from .gateway_readiness import ProbedReadiness
from .gateway_session import (
    BridgeLimits,
    BridgeStats,
    ClientSession,
    Sink,
    is_output,
    log_send_failure,
    take_sockets,
)
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
    "take_sockets",
]

log = logging.getLogger("kernelkeeper.gateway")

#: WebSocket close codes: a newer socket with the same session_id took over...
CLOSE_REPLACED = 4000
#: ...the kernel was deleted or culled (sent after its final status)...
CLOSE_KERNEL_GONE = 4004
#: ...the gateway shuts down (or the client went away).
CLOSE_GOING_AWAY = 1001


class KernelBridge(ProbedReadiness):
    """The gateway's zmq sockets to one kernel, shared by all its WebSockets."""

    def __init__(
        self,
        kernel_id: str,
        info: ConnectionInfo,
        limits: BridgeLimits | None = None,
        context: zmq.asyncio.Context | None = None,
        adopted: dict[str, zmq.asyncio.Socket] | None = None,
        adopted_session: str | None = None,
        activity: KernelActivity | None = None,
    ) -> None:
        """``adopted``: the connected sockets of a client proven ready (see
        :func:`take_sockets`); the bridge is live at once and its first session
        uses the dealers. ``adopted_session``: that client's session id (the
        statuses of its own requests are not the clients' business).
        ``activity``: the manager's subscription to the kernel's iopub, read
        through :meth:`KernelActivity.tap` instead of a SUB socket of our own."""
        self.kernel_id = kernel_id
        self.limits = limits or BridgeLimits()
        self.stats = BridgeStats()
        self.sessions: dict[str, ClientSession] = {}
        self._info = info
        self._context = context or zmq.asyncio.Context.instance()
        self._session = Session(info.key, info.signature_scheme)
        self._adopted_mark = adopted_session.encode("ascii") if adopted_session else None
        self._held: list[tuple[ClientSession, str, list[bytes]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._reaped: list[asyncio.Task[None]] = []
        self._closed = False
        self._init_readiness()
        adopted = dict(adopted or {})
        iopub = adopted.pop("iopub", None)
        self._untap: Callable[[], None] | None = None
        # Control is opened when a session first uses it (few do; see ClientSession).
        control = adopted.pop("control", None)
        if control is not None:
            control.close()
        #: Connected dealers for the first session (those of an adopted client).
        self._spare: dict[str, zmq.asyncio.Socket] | None = (
            adopted if set(adopted) == {"shell", "stdin"} else None
        )
        for sock in adopted.values() if self._spare is None else ():
            sock.close()
        # No high-water mark on our side of iopub: with one, zmq drops messages when
        # we fall behind a flood, and a lost idle status leaves a client waiting
        # forever. What we hold per client is bounded by the WebSocket send queues.
        # (libzmq applies a changed high-water mark to connected pipes too.)
        self._iopub: zmq.asyncio.Socket | None = None
        # The manager's subscription is known to reach the kernel once its welcome
        # came. An adopted client's may have subscribed first (a pool hit's):
        # ipykernel's XPUB then welcomes no second subscriber, so that client's
        # proven socket is kept rather than probing the manager's.
        if activity is not None and (iopub is None or activity.subscribed):
            if iopub is not None:
                iopub.close()
            self._untap = activity.tap(self._on_tapped)
        elif iopub is None:
            self._iopub = self._socket(zmq.SUB, "iopub", rcvhwm=0)
            self._iopub.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            self._iopub = iopub
            self._iopub.setsockopt(zmq.RCVHWM, 0)
        if iopub is not None:
            # Adopted from a client proven ready: its subscription (or the
            # manager's, already subscribed, that replaced it) is live at once.
            self._probe_seen = self._probe_replied = True
            self._live.set()
        if self._iopub is not None:
            self._tasks.append(
                asyncio.get_running_loop().create_task(
                    self.receive(self._iopub, "iopub", self._fan_out), name="kk-gw-iopub"
                )
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

    # -- receiving ------------------------------------------------------------

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
        if self._adopted_mark is not None and self._adopted_mark in parent:
            return  # the adopted client's own probe (or a pool's hand-over)
        for cs in list(self.sessions.values()):
            cs.deliver(channel, parts)

    def _on_tapped(self, parts: list[bytes]) -> None:
        # Verified by the manager's subscription already.
        if not self._closed:
            self._fan_out("iopub", parts)

    @property
    def closed(self) -> bool:
        return self._closed

    def drop_held(self) -> None:
        """Forget the clients' messages held for a kernel that is dead for good."""
        self._held.clear()

    # -- sessions ---------------------------------------------------------------

    def session(self, session_id: str) -> ClientSession:
        """The session of ``session_id``, opened if new."""
        cs = self.sessions.get(session_id)
        if cs is None:
            cs = ClientSession(self, session_id)
            spare, self._spare = self._spare, None
            cs.open(self._context, self._info, spare)
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
        sock = cs.socket(channel)
        if sock is None:
            return  # the session was closed meanwhile
        frames = [DELIM, self._session.sign(parts[:4]), *parts]
        # zmq queues while the kernel is away (up to its high-water mark), so this
        # completes at once; a failure is logged by the callback, not lost.
        fut: Any = sock.send_multipart(frames)
        fut.add_done_callback(log_send_failure)

    def _flush(self) -> None:
        held, self._held = self._held, []
        for cs, channel, parts in held:
            self._send(cs, channel, parts)

    def announce(self, status: str, reason: str | None = None) -> None:
        """Tell every session ``status`` (restarting, dead) as jupyter_server does: an
        iopub status message of the gateway's own (with ``reason``, if given)."""
        content = {"execution_state": status}
        if reason:
            content["reason"] = reason
        msg = self._session.msg("status", content)
        parts = message_parts(msg)
        for cs in list(self.sessions.values()):
            cs.deliver("iopub", parts)

    # -- closing ----------------------------------------------------------------

    async def drain(self, timeout: float = 0.05) -> None:
        """Deliver what the kernel already sent on iopub (its final status), waiting at
        most ``timeout`` s for bytes still in flight."""
        # Tapped: the manager's subscription hands its last messages over as it closes.
        task = self._tasks[0] if self._tasks else None
        iopub = self._iopub
        if task is None or iopub is None or iopub.closed:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await drain_socket(
            iopub, lambda frames: self._dispatch(frames, "iopub", self._fan_out), timeout
        )

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
        untap, self._untap = self._untap, None
        if untap is not None:
            untap()
        if self._iopub is not None:
            self._iopub.close()
        for sock in [*self._probes, *(self._spare or {}).values()]:
            sock.close()
        self._spare = None
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

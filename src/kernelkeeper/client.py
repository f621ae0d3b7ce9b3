"""The async kernel client: a thin composition of the transport modules.

:mod:`~kernelkeeper.channels` (one receive task per socket, bounded queues,
the heartbeat), :mod:`~kernelkeeper.router` (per-request subscriptions by
msg_id), :mod:`~kernelkeeper.protocol` (the requests, each described once),
:mod:`~kernelkeeper.execution` (run_cell, execute_interactive),
:mod:`~kernelkeeper.readiness` (wait_for_ready),
:mod:`~kernelkeeper.liveness` (death, by process or heartbeat) and
:mod:`~kernelkeeper.endpoint` (connection info, jupyter_client's accessors).
Each message is parsed once and routed by its parent's msg_id to the
subscription of the request that caused it, or else to the channel's queue,
where jupyter_client-style code (nbclient, papermill) reads it with
``get_msg``.

The client owns only sockets. Where it needs the process (to notice a kernel
that died while we wait on it, or to interrupt by signal) it holds the
abstract :class:`~kernelkeeper.managerabc.KernelManagerABC`; without one it
judges by the heartbeat. Either way a death fails every pending wait at once
with :class:`KernelDiedError`.

Everything here runs on the event loop that started the channels, hooks and
callbacks included (``status_hook``, output and stdin hooks, ``on_dead``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import zmq
import zmq.asyncio

from .boundary import mapped
from .channels import Channel, ChannelLink, HBChannel, MsgId
from .connection import ConnectionInfo
from .endpoint import KernelEndpoint, as_connection_info
from .errors import NotRunningError
from .execution import CellResult, ExecutionMethods, output_from_msg, print_output
from .liveness import DeathWatch, Liveness
from .managerabc import KernelManagerABC
from .protocol import KernelRequests
from .readiness import wait_for_ready
from .router import ReplySink, Router
from .session import Message, Session

__all__ = [
    "AsyncKernelClient",
    "CellResult",
    "Channel",
    "HBChannel",
    "MsgId",
    "output_from_msg",
    "print_output",
]

log = logging.getLogger("kernelkeeper.client")

ConnectionSource = ConnectionInfo | Mapping[str, Any] | str | os.PathLike[str]


class AsyncKernelClient(KernelRequests, ExecutionMethods, KernelEndpoint):
    """Talks to one kernel over its five channels, on the running asyncio loop.

    Request methods return the request's msg_id (the jupyter_client
    convention); with ``reply=True`` they wait for and return the reply.
    A channel is started on first use if ``start_channels`` was not called.

    :param connection_info: a :class:`ConnectionInfo`, a dict or a connection
        file path; or give ``connection_file=`` and call
        :meth:`load_connection_file` (jupyter_client's way).
    :param manager: the kernel's process manager, which tells the client when
        the kernel dies (clients made by ``AsyncKernelManager.client()`` get
        one that follows restarts).
    :param hb_max_misses: without a manager, heartbeats missed in a row
        (``hb_channel.time_to_dead`` seconds each) after which the kernel is
        taken for dead; ``None`` never does. A kernel that beats again
        counts as alive again.
    """

    allow_stdin: bool = True
    shell_channel_class: type[Channel] = Channel
    iopub_channel_class: type[Channel] = Channel
    stdin_channel_class: type[Channel] = Channel
    control_channel_class: type[Channel] = Channel
    hb_channel_class: type[HBChannel] = HBChannel

    def __init__(
        self,
        connection_info: ConnectionSource | None = None,
        *,
        connection_file: str | os.PathLike[str] | None = None,
        manager: KernelManagerABC | None = None,
        interrupt_mode: str = "signal",
        session: Session | None = None,
        context: zmq.asyncio.Context | None = None,
        hb_max_misses: int | None = 5,
    ) -> None:
        if connection_info is not None and isinstance(connection_info, (str, os.PathLike)):
            connection_file = connection_file or connection_info
        info = None if connection_info is None else as_connection_info(connection_info)
        self.connection_info = info
        self.connection_file = "" if connection_file is None else os.fspath(connection_file)
        self._explicit_session = session is not None
        self.session = session or Session(
            info.key if info else b"", info.signature_scheme if info else "hmac-sha256"
        )
        self.manager = manager
        self.interrupt_mode = interrupt_mode
        self.router = Router()
        self.liveness = Liveness(manager, self._fail_waits, hb_max_misses)
        #: Set on every iopub message (the ready handshake clears and awaits it).
        self.iopub_confirmed = asyncio.Event()
        self.kernel_info_reply: Message | None = None
        #: Set by whoever proved this client ready before handing it out (a
        #: warm pool): the manager generation of that proof. The next
        #: ``wait_for_ready`` uses it instead of a round trip, once.
        self.ready_proof: int | None = None
        #: Called (on the loop) with every iopub status message; the manager tracks busy/idle.
        self.status_hook: Callable[[Message], None] | None = None
        #: Called (on the loop) with the kernel_info reply that ends a successful
        #: ``wait_for_ready``: the manager learns from it that the kernel is up.
        #: The reply is on shell, so it cannot be lost as a probe's iopub idle
        #: can, when it is published before our subscription reaches the kernel.
        self.ready_hook: Callable[[Message], None] | None = None
        self.context = context or zmq.asyncio.Context.instance()
        self._death_watch = DeathWatch(self.liveness)
        self._link = ChannelLink(
            context=self.context,
            session=self.session,
            connection_info=info,
            deliver=self._deliver,
            check_alive=self.liveness.check,
            on_start=self._death_watch.start,
            on_beat=self.liveness.hb_beat,
            on_missed=lambda n: self.liveness.hb_missed(n, self.hb_channel.time_to_dead),
        )
        self.shell_channel = self.shell_channel_class(self._link, "shell")
        self.iopub_channel = self.iopub_channel_class(self._link, "iopub")
        self.stdin_channel = self.stdin_channel_class(self._link, "stdin")
        self.control_channel = self.control_channel_class(self._link, "control")
        self.hb_channel = self.hb_channel_class(self._link)

    def __repr__(self) -> str:
        state = "running" if self.channels_running else "stopped"
        return f"<{type(self).__name__} {self.transport} {state}>"

    @property
    def hb_max_misses(self) -> int | None:
        """Heartbeats missed in a row that make a manager-less client's kernel dead."""
        return self.liveness.hb_max_misses

    @hb_max_misses.setter
    def hb_max_misses(self, value: int | None) -> None:
        self.liveness.hb_max_misses = value

    def _connection_changed(self, info: ConnectionInfo) -> None:
        if self.channels_running:
            raise NotRunningError("Stop the channels before loading new connection info")
        self._link.connection_info = info
        self._link.session = self.session

    # -- channels -------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """How many bad messages (forged signature, malformed frames) were dropped."""
        return self.session.dropped_total

    def _socket_channels(self) -> tuple[Channel, ...]:
        return (self.shell_channel, self.iopub_channel, self.stdin_channel, self.control_channel)

    def start_channels(
        self,
        shell: bool = True,
        iopub: bool = True,
        stdin: bool = True,
        hb: bool = True,
        control: bool = True,
    ) -> None:
        """Connect the channels (must be called with the event loop running)."""
        for wanted, ch in (
            (iopub, self.iopub_channel),
            (shell, self.shell_channel),
            (stdin, self.stdin_channel),
            (control, self.control_channel),
        ):
            if wanted:
                ch.start()
        if hb:
            self.hb_channel.start()
        self._death_watch.start()

    def stop_channels(self) -> None:
        """Close every channel; pending waits fail with :class:`NotRunningError`.

        Receive tasks are cancelled; ``aclose`` also awaits them.
        """
        self._fail_closed()
        for ch in self._socket_channels():
            ch.stop()
        self.hb_channel.stop()
        self._death_watch.stop()

    async def aclose(self) -> None:
        """Stop the channels and wait for their tasks to end."""
        self._fail_closed()
        await asyncio.gather(
            *(ch.aclose() for ch in self._socket_channels()),
            self.hb_channel.aclose(),
            self._death_watch.aclose(),
        )
        self.stop_channels()

    def _fail_closed(self) -> None:
        def closed() -> NotRunningError:
            return NotRunningError("The client's channels were closed while a reply was pending")

        self._fail_waits(closed)

    def _fail_waits(self, make_error: Callable[[], BaseException]) -> int:
        # Replies, executions, and get_msg calls waiting on an empty queue.
        n = self.router.fail_all(make_error)
        for ch in self._socket_channels():
            ch.queue.fail_waiters(make_error)
        return n

    async def __aenter__(self) -> AsyncKernelClient:
        self.start_channels()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def channels_running(self) -> bool:
        """Is any channel running?"""
        return any(ch.is_alive() for ch in self._socket_channels()) or self.hb_channel.is_alive()

    def _deliver(self, channel: Channel, msg: Message, nbytes: int = 0) -> None:
        if channel.name == "iopub":
            self.iopub_confirmed.set()
            if msg["msg_type"] == "iopub_welcome":
                return  # only proves the subscription; nothing for users
            if msg["msg_type"] == "status" and self.status_hook is not None:
                self.status_hook(msg)
        if not self.router.route(channel.name, msg):
            channel.put(msg, nbytes)

    # -- liveness -------------------------------------------------------------

    async def is_alive(self) -> bool:
        """Is the kernel alive: its process if we know it, else its heartbeat."""
        if self.manager is not None:
            return await self.manager.is_alive()
        if self.hb_channel.is_alive():
            return self.hb_channel.is_beating()
        return self.liveness.current() is None

    # -- requests -------------------------------------------------------------

    def _channel(self, name: str) -> Channel:
        return {
            "shell": self.shell_channel,
            "control": self.control_channel,
            "stdin": self.stdin_channel,
            "iopub": self.iopub_channel,
        }[name]

    def _request(
        self,
        channel: str,
        msg_type: str,
        content: Mapping[str, Any],
        reply: bool,
        timeout: float | None,
    ) -> Any:
        # Sent now, as jupyter_client's async client does: the msg_id comes back
        # at once (awaitable too), the reply only if asked for (a coroutine).
        # The iopub messages the request causes go to the queue as usual.
        self.liveness.check()
        ch = self._channel(channel)
        msg = self.session.msg(msg_type, content)
        if not reply:
            ch.send(msg)
            return MsgId(msg["msg_id"])
        sub = self.router.subscribe(msg["msg_id"])
        try:
            ch.send(msg)
        except BaseException:
            sub.close()
            raise

        async def wait() -> Message:
            with mapped(), sub:
                return await sub.wait_reply(timeout)

        return wait()

    def _request_to(
        self, channel: str, msg_type: str, content: Mapping[str, Any], sink: ReplySink | None
    ) -> str:
        """Send a request now; its reply (or the failure) goes to ``sink``.

        The blocking face's requests: on the loop, in one call, with no
        coroutine, task or future between the reply and the waiting thread.
        Returns the msg_id.
        """
        self.liveness.check()
        ch = self._channel(channel)
        msg = self.session.msg(msg_type, content)
        msg_id: str = msg["msg_id"]
        if sink is None:
            ch.send(msg)
            return msg_id
        sub = self.router.subscribe(msg_id, sink=sink)
        try:
            ch.send(msg)
        except BaseException:
            sub.close()
            raise
        return msg_id

    # -- readiness ------------------------------------------------------------

    async def wait_for_ready(self, timeout: float | None = None) -> Message:
        """Return once the kernel answers kernel_info and our iopub is subscribed.

        Raises :class:`KernelDiedError` at once if the kernel process exits
        meanwhile, :class:`KernelTimeoutError` after ``timeout`` seconds.
        """
        with mapped():
            return await wait_for_ready(self, timeout)

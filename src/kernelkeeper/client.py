"""The async kernel client: sockets, reply routing, heartbeat, ready handshake.

One receive task per socket parses each message once and routes it by its
parent's msg_id: to the future of an awaited reply, to the listener of an
execution being collected, or else to the channel's queue, where
jupyter_client-style code (nbclient, papermill) reads it with ``get_msg``.

The client owns only sockets. Where it needs the process (to notice a kernel
that died while we wait on it, or to interrupt by signal) it holds the
abstract :class:`~kernelkeeper.managerabc.KernelManagerABC`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import os
import queue
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any

import zmq
import zmq.asyncio

from .connection import ConnectionInfo
from .errors import KernelDiedError, KernelTimeoutError, NotRunningError
from .managerabc import KernelManagerABC
from .session import Message, Session

__all__ = ["AsyncKernelClient", "CellResult", "Channel", "HBChannel"]

log = logging.getLogger("kernelkeeper.client")

OutputHook = Callable[[Message], Any]
StdinHook = Callable[[Message], Any]

_SOCKET_TYPES = {
    "shell": zmq.DEALER,
    "control": zmq.DEALER,
    "stdin": zmq.DEALER,
    "iopub": zmq.SUB,
}


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


class _TaskOwner:
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
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def is_alive(self) -> bool:
        return self._task is not None and not self._task.done()


class Channel(_TaskOwner):
    """One kernel socket plus the queue of its messages nobody else claimed.

    Mirrors jupyter_client's async channel: ``await get_msg(timeout)`` raises
    :class:`queue.Empty` when nothing arrives in time.
    """

    #: Most unread messages kept; see :meth:`put`.
    max_queued = 1000

    def __init__(self, client: AsyncKernelClient, name: str) -> None:
        self.client = client
        self.name = name
        self.socket: zmq.asyncio.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        #: Messages dropped because nobody read the queue (oldest go first).
        self.overflowed = 0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Channel {self.name} {'running' if self.is_alive() else 'stopped'}>"

    @property
    def session(self) -> Session:
        return self.client.session

    def start(self) -> None:
        """Connect the socket and start receiving."""
        if self._task is not None:
            return
        sock = self.client._context.socket(_SOCKET_TYPES[self.name])
        sock.linger = 1000 if self.name == "control" else 0
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        if self.name == "iopub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            # stdin must share the shell's identity: the kernel routes
            # input_request to the peer that sent the execute_request.
            sock.setsockopt(zmq.IDENTITY, self.client.session.bsession)
        sock.connect(self.client.connection_info.url(self.name))
        self.socket = sock
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._receive(sock), name=f"kk-{self.name}")

    def stop(self) -> None:
        """Cancel the receive task and close the socket (no await needed)."""
        super().stop()
        sock, self.socket = self.socket, None
        if sock is not None:
            sock.close()

    async def _receive(self, sock: zmq.asyncio.Socket) -> None:
        session = self.client.session
        dispatch = self.client._dispatch
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
                    dispatch(self, msg)
                except Exception:  # a failing user hook must not kill the channel
                    log.exception("Error handling a %s message", self.name)

    def put(self, msg: Message) -> None:
        """Queue a message for ``get_msg``; past ``max_queued`` the oldest is dropped.

        An unread queue must not grow without bound in a long-lived client
        (jupyter_client's sockets drop at their 1000-message high-water mark).
        """
        q = self.queue
        if q.qsize() >= self.max_queued:
            q.get_nowait()
            self.overflowed += 1
            if self.overflowed == 1:
                log.warning(
                    "%s queue full (%d unread messages); dropping the oldest",
                    self.name,
                    self.max_queued,
                )
        q.put_nowait(msg)

    def send(self, msg: Mapping[str, Any]) -> None:
        """Sign and send a message dict on this channel."""
        if self.socket is None:
            raise NotRunningError(f"The {self.name} channel is not running")
        frames = self.client.session.serialize(msg)
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

    async def get_msg(self, timeout: float | None = None) -> Message:
        """The next queued message; :class:`queue.Empty` after ``timeout`` seconds."""
        if timeout is None:
            return await self.queue.get()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
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


class HBChannel(_TaskOwner):
    """Pings the kernel's heartbeat socket; notices a kernel that stopped beating.

    ``on_dead`` callbacks receive the seconds since the last beat.
    """

    def __init__(self, client: AsyncKernelClient, time_to_dead: float = 1.0) -> None:
        self.client = client
        self.time_to_dead = time_to_dead
        self._beating = True
        self._paused = False
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.on_dead: list[Callable[[float], Any]] = []

    def start(self) -> None:
        if self._task is None:
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
            cb(since_last_heartbeat)

    def _socket(self) -> zmq.asyncio.Socket:
        sock = self.client._context.socket(zmq.REQ)
        sock.linger = 0
        sock.connect(self.client.connection_info.url("hb"))
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
                    self._last = time.monotonic()
                    # The beat period: wait out the rest of time_to_dead.
                    await asyncio.sleep(max(0.0, self.time_to_dead - (self._last - started)))
                    continue
                # No answer: a REQ socket is stuck after a lost reply; start over.
                sock.close()
                sock = self._socket()
                if self._beating:
                    self._beating = False
                self.call_handlers(time.monotonic() - self._last)
        finally:
            sock.close()


@dataclasses.dataclass
class CellResult:
    """What one execution produced: the reply plus its outputs in notebook form."""

    reply: Message
    outputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.reply["content"].get("status", ""))

    @property
    def execution_count(self) -> int | None:
        count = self.reply["content"].get("execution_count")
        return None if count is None else int(count)

    @property
    def stdout(self) -> str:
        return "".join(o["text"] for o in self.outputs if o.get("name") == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(o["text"] for o in self.outputs if o.get("name") == "stderr")

    @property
    def error(self) -> dict[str, Any] | None:
        for o in self.outputs:
            if o["output_type"] == "error":
                return o
        return None

    def result(self) -> dict[str, Any] | None:
        """The execute_result's data bundle, if there was one."""
        for o in self.outputs:
            if o["output_type"] == "execute_result":
                return dict(o["data"])
        return None


def output_from_msg(msg: Message) -> dict[str, Any] | None:
    """The notebook output for an iopub message (None for non-output messages)."""
    t, c = msg["msg_type"], msg["content"]
    if t == "stream":
        return {"output_type": "stream", "name": c.get("name"), "text": c.get("text", "")}
    if t in ("display_data", "update_display_data"):
        return {
            "output_type": "display_data",
            "data": c.get("data", {}),
            "metadata": c.get("metadata", {}),
        }
    if t == "execute_result":
        return {
            "output_type": "execute_result",
            "data": c.get("data", {}),
            "metadata": c.get("metadata", {}),
            "execution_count": c.get("execution_count"),
        }
    if t == "error":
        return {
            "output_type": "error",
            "ename": c.get("ename"),
            "evalue": c.get("evalue"),
            "traceback": c.get("traceback", []),
        }
    return None


class AsyncKernelClient:
    """Talks to one kernel over its five channels, on the running asyncio loop.

    Request methods return the request's msg_id (the jupyter_client
    convention); with ``reply=True`` they wait for and return the reply.
    """

    allow_stdin: bool = True

    def __init__(
        self,
        connection_info: ConnectionInfo | Mapping[str, Any] | str | os.PathLike[str],
        *,
        manager: KernelManagerABC | None = None,
        interrupt_mode: str = "signal",
        session: Session | None = None,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        if isinstance(connection_info, (str, os.PathLike)):
            connection_info = ConnectionInfo.from_file(connection_info)
        elif not isinstance(connection_info, ConnectionInfo):
            connection_info = ConnectionInfo.from_dict(connection_info)
        self.connection_info = connection_info
        self.session = session or Session(connection_info.key, connection_info.signature_scheme)
        self.manager = manager
        self.interrupt_mode = interrupt_mode
        self._context = context or zmq.asyncio.Context.instance()
        self._replies: dict[str, asyncio.Future[Message]] = {}
        self._listeners: dict[str, Callable[[Message], None]] = {}
        self._iopub_seen: asyncio.Event | None = None
        self.kernel_info_reply: Message | None = None
        #: Called with every iopub status message (the manager tracks busy/idle).
        self.status_hook: Callable[[Message], None] | None = None
        self.shell_channel = Channel(self, "shell")
        self.iopub_channel = Channel(self, "iopub")
        self.stdin_channel = Channel(self, "stdin")
        self.control_channel = Channel(self, "control")
        self.hb_channel = HBChannel(self)

    def __repr__(self) -> str:
        state = "running" if self.channels_running else "stopped"
        return f"<{type(self).__name__} {self.connection_info.transport} {state}>"

    # -- channels -------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """How many bad messages (forged signature, malformed frames) were dropped."""
        return self.session.dropped_total

    def start_channels(
        self,
        shell: bool = True,
        iopub: bool = True,
        stdin: bool = True,
        hb: bool = True,
        control: bool = True,
    ) -> None:
        """Connect the channels (must be called with the event loop running)."""
        if self._iopub_seen is None:
            self._iopub_seen = asyncio.Event()
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

    def stop_channels(self) -> None:
        """Close every channel. Their receive tasks are cancelled; ``aclose`` awaits them."""
        for ch in (
            self.shell_channel,
            self.iopub_channel,
            self.stdin_channel,
            self.control_channel,
        ):
            ch.stop()
        self.hb_channel.stop()
        for fut in self._replies.values():
            if not fut.done():
                fut.cancel()
        self._replies.clear()

    async def aclose(self) -> None:
        """Stop the channels and wait for their tasks to end."""
        tasks = [
            ch.aclose()
            for ch in (
                self.shell_channel,
                self.iopub_channel,
                self.stdin_channel,
                self.control_channel,
            )
        ]
        await asyncio.gather(*tasks, self.hb_channel.aclose())
        self.stop_channels()

    async def __aenter__(self) -> AsyncKernelClient:
        self.start_channels()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def channels_running(self) -> bool:
        return any(
            ch.is_alive()
            for ch in (
                self.shell_channel,
                self.iopub_channel,
                self.stdin_channel,
                self.control_channel,
                self.hb_channel,
            )
        )

    def _dispatch(self, channel: Channel, msg: Message) -> None:
        parent = msg["parent_header"].get("msg_id")
        if channel.name == "iopub":
            if self._iopub_seen is not None:
                self._iopub_seen.set()
            if msg["msg_type"] == "iopub_welcome":
                return  # only proves the subscription; nothing for users
            if msg["msg_type"] == "status" and self.status_hook is not None:
                self.status_hook(msg)
        if parent is not None:
            if channel.name in ("shell", "control"):
                fut = self._replies.pop(parent, None)
                if fut is not None:
                    if not fut.done():
                        fut.set_result(msg)
                    return
            else:
                listener = self._listeners.get(parent)
                if listener is not None:
                    listener(msg)
                    return
        channel.put(msg)

    # -- sending --------------------------------------------------------------

    def _send(
        self,
        channel: Channel,
        msg_type: str,
        content: Mapping[str, Any],
        *,
        expect_reply: bool = False,
    ) -> tuple[str, asyncio.Future[Message] | None]:
        msg = self.session.msg(msg_type, content)
        fut = None
        if expect_reply:
            fut = asyncio.get_running_loop().create_future()
            self._replies[msg["msg_id"]] = fut
        channel.send(msg)
        return msg["msg_id"], fut

    def _request(
        self,
        channel: Channel,
        msg_type: str,
        content: Mapping[str, Any],
        reply: bool,
        timeout: float | None,
    ) -> Any:
        # Sent now, as jupyter_client's async client does: the msg_id comes back
        # at once (awaitable too), the reply only if asked for (a coroutine).
        msg_id, fut = self._send(channel, msg_type, content, expect_reply=reply)
        if fut is None:
            return MsgId(msg_id)
        return self._reply(msg_id, fut, timeout, swallow_status=msg_type != "execute_request")

    async def _reply(
        self,
        msg_id: str,
        fut: asyncio.Future[Message],
        timeout: float | None,
        swallow_status: bool,
    ) -> Message:
        if not swallow_status:
            return await self._await_reply(msg_id, fut, timeout)
        # The caller takes the reply directly; the busy/idle status this
        # request causes on iopub would only pile up unread in the queue.
        self._listeners[msg_id] = _ignore
        try:
            return await self._await_reply(msg_id, fut, timeout)
        finally:
            self._release_listener(msg_id)

    async def _await_reply(
        self, msg_id: str, fut: asyncio.Future[Message], timeout: float | None
    ) -> Message:
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise KernelTimeoutError(f"No reply to {msg_id} within {timeout} s") from None
        finally:
            self._replies.pop(msg_id, None)

    def execute(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: Mapping[str, str] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Send an execute_request; the msg_id, or the reply with ``reply=True``."""
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": dict(user_expressions or {}),
            "allow_stdin": self.allow_stdin if allow_stdin is None else allow_stdin,
            "stop_on_error": stop_on_error,
        }
        return self._request(self.shell_channel, "execute_request", content, reply, timeout)

    def kernel_info(self, *, reply: bool = False, timeout: float | None = None) -> Any:
        """Ask for the kernel's info."""
        return self._request(self.shell_channel, "kernel_info_request", {}, reply, timeout)

    def complete(
        self,
        code: str,
        cursor_pos: int | None = None,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Ask for completions at ``cursor_pos`` (default: end of code)."""
        pos = len(code) if cursor_pos is None else cursor_pos
        return self._request(
            self.shell_channel,
            "complete_request",
            {"code": code, "cursor_pos": pos},
            reply,
            timeout,
        )

    def inspect(
        self,
        code: str,
        cursor_pos: int | None = None,
        detail_level: int = 0,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Ask for information about the object at ``cursor_pos``."""
        pos = len(code) if cursor_pos is None else cursor_pos
        content = {"code": code, "cursor_pos": pos, "detail_level": detail_level}
        return self._request(self.shell_channel, "inspect_request", content, reply, timeout)

    def history(
        self,
        raw: bool = True,
        output: bool = False,
        hist_access_type: str = "range",
        *,
        reply: bool = False,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Ask for the kernel's input history."""
        if hist_access_type == "range":
            kwargs.setdefault("session", 0)
            kwargs.setdefault("start", 0)
        content = {"raw": raw, "output": output, "hist_access_type": hist_access_type, **kwargs}
        return self._request(self.shell_channel, "history_request", content, reply, timeout)

    def is_complete(self, code: str, *, reply: bool = False, timeout: float | None = None) -> Any:
        """Ask whether ``code`` is a complete statement."""
        return self._request(
            self.shell_channel, "is_complete_request", {"code": code}, reply, timeout
        )

    def comm_info(
        self, target_name: str | None = None, *, reply: bool = False, timeout: float | None = None
    ) -> Any:
        """Ask for the open comms (of ``target_name``)."""
        content = {} if target_name is None else {"target_name": target_name}
        return self._request(self.shell_channel, "comm_info_request", content, reply, timeout)

    def shutdown(
        self, restart: bool = False, *, reply: bool = False, timeout: float | None = None
    ) -> Any:
        """Ask the kernel to shut down, on the control channel."""
        return self._request(
            self.control_channel, "shutdown_request", {"restart": restart}, reply, timeout
        )

    def input(self, string: str) -> None:
        """Answer the kernel's input_request."""
        self.stdin_channel.send(self.session.msg("input_reply", {"value": string}))

    async def interrupt(self, *, reply: bool = False, timeout: float | None = None) -> Any:
        """Interrupt the kernel: by message or by signal, as its spec asks."""
        if self.interrupt_mode == "message" or self.manager is None:
            return await self._request(
                self.control_channel, "interrupt_request", {}, reply, timeout
            )
        await self.manager.interrupt()
        return None

    async def get_shell_msg(self, timeout: float | None = None) -> Message:
        return await self.shell_channel.get_msg(timeout)

    async def get_iopub_msg(self, timeout: float | None = None) -> Message:
        return await self.iopub_channel.get_msg(timeout)

    async def get_stdin_msg(self, timeout: float | None = None) -> Message:
        return await self.stdin_channel.get_msg(timeout)

    async def get_control_msg(self, timeout: float | None = None) -> Message:
        return await self.control_channel.get_msg(timeout)

    async def is_alive(self) -> bool:
        """Is the kernel alive: its process if we know it, else its heartbeat."""
        if self.manager is not None:
            return await self.manager.is_alive()
        if self.hb_channel.is_alive():
            return self.hb_channel.is_beating()
        return True

    # -- readiness ------------------------------------------------------------

    async def wait_for_ready(self, timeout: float | None = None) -> Message:
        """Return once the kernel answers kernel_info and our iopub is subscribed.

        Raises :class:`KernelDiedError` at once if the kernel process exits
        meanwhile, :class:`KernelTimeoutError` after ``timeout`` seconds.
        """
        if not self.channels_running:
            self.start_channels()
        assert self._iopub_seen is not None
        # Prove the subscription anew: after a restart the old proof is stale.
        self._iopub_seen.clear()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        died: asyncio.Future[Any] | None = None
        if self.manager is not None:
            died = asyncio.ensure_future(self.manager.wait())
        sent: list[str] = []

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - loop.time())

        async def race(aw: Awaitable[Any], limit: float | None) -> bool:
            fut = asyncio.ensure_future(aw)
            waiting = {fut} if died is None else {fut, died}
            try:
                await asyncio.wait(waiting, timeout=limit, return_when="FIRST_COMPLETED")
                # Decide before the finally cancels fut: cancelling a plain future
                # (the kernel_info reply) makes it done at once.
                if died is not None and died.done() and not fut.done():
                    raise self._died_error("before it was ready")
                return fut.done() and not fut.cancelled()
            finally:
                if not fut.done():
                    fut.cancel()

        def ask() -> asyncio.Future[Message]:
            msg_id, fut = self._send(
                self.shell_channel, "kernel_info_request", {}, expect_reply=True
            )
            sent.append(msg_id)
            # The busy/idle status of our own probes is not user output.
            self._listeners[msg_id] = _ignore
            assert fut is not None
            return fut

        try:
            reply_fut = ask()
            if not await race(reply_fut, remaining()):
                raise KernelTimeoutError(f"Kernel did not reply to kernel_info within {timeout} s")
            self.kernel_info_reply = reply_fut.result()
            # A reply proves the shell; output needs the iopub subscription in
            # place too. Kernels announce it (iopub_welcome) or, failing that,
            # the status messages of another probe will show it.
            while not self._iopub_seen.is_set():
                left = remaining()
                if left is not None and left <= 0:
                    raise KernelTimeoutError("Kernel iopub did not connect in time")
                if await race(self._iopub_seen.wait(), 0.25 if left is None else min(left, 0.25)):
                    break
                ask()
            return self.kernel_info_reply
        finally:
            if died is not None:
                died.cancel()
            for msg_id in sent:
                self._replies.pop(msg_id, None)
                self._release_listener(msg_id)

    def _release_listener(self, msg_id: str) -> None:
        # Status messages of a probe may still be in flight; swallow them a
        # little longer rather than leak them into the iopub queue.
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, self._listeners.pop, msg_id, None)

    def _died_error(self, when: str) -> KernelDiedError:
        m = self.manager
        code = m.exit_code if m is not None else None
        tail = m.stderr_tail() if m is not None else ""
        return KernelDiedError(f"Kernel died {when}", code, tail)

    # -- executing ------------------------------------------------------------

    async def execute_interactive(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: Mapping[str, str] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
        timeout: float | None = None,
        output_hook: OutputHook | None = None,
        stdin_hook: StdinHook | None = None,
    ) -> Message:
        """Execute ``code`` and wait for its reply, passing iopub messages to ``output_hook``.

        Without ``output_hook``, output is written to this process's stdout and
        stderr as jupyter_client does. ``stdin_hook`` answers input_request
        messages (default: ask on this terminal).
        """
        allow = self.allow_stdin if allow_stdin is None else allow_stdin
        hook = output_hook or print_output
        reply = await self._run(
            code,
            silent,
            store_history,
            user_expressions,
            allow,
            stop_on_error,
            timeout,
            hook,
            stdin_hook,
        )
        return reply

    async def run_cell(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_output: OutputHook | None = None,
        stdin_hook: StdinHook | None = None,
        silent: bool = False,
        store_history: bool = True,
        stop_on_error: bool = True,
    ) -> CellResult:
        """Execute ``code`` and collect its outputs (stream, display, result, error).

        ``on_output`` sees every iopub message of the execution as it arrives.
        """
        outputs: list[dict[str, Any]] = []

        def collect(msg: Message) -> None:
            out = output_from_msg(msg)
            if out is not None:
                if (
                    out["output_type"] == "stream"
                    and outputs
                    and outputs[-1].get("name") == out["name"]
                ):
                    outputs[-1]["text"] += out["text"]
                elif msg["msg_type"] != "update_display_data":
                    outputs.append(out)
            if on_output is not None:
                on_output(msg)

        reply = await self._run(
            code,
            silent,
            store_history,
            None,
            stdin_hook is not None,
            stop_on_error,
            timeout,
            collect,
            stdin_hook,
        )
        return CellResult(reply, outputs)

    async def _run(
        self,
        code: str,
        silent: bool,
        store_history: bool,
        user_expressions: Mapping[str, str] | None,
        allow_stdin: bool,
        stop_on_error: bool,
        timeout: float | None,
        output_hook: OutputHook,
        stdin_hook: StdinHook | None,
    ) -> Message:
        if not self.channels_running:
            raise NotRunningError("Channels are not running; call start_channels() first")
        loop = asyncio.get_running_loop()
        idle: asyncio.Future[None] = loop.create_future()
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": dict(user_expressions or {}),
            "allow_stdin": allow_stdin,
            "stop_on_error": stop_on_error,
        }
        msg = self.session.msg("execute_request", content)
        msg_id = msg["msg_id"]
        stdin_tasks: set[asyncio.Task[Any]] = set()

        def on_iopub(m: Message) -> None:
            if m["msg_type"] == "status" and m["content"].get("execution_state") == "idle":
                if not idle.done():
                    idle.set_result(None)
                return
            output_hook(m)

        def on_stdin(m: Message) -> None:
            hook = stdin_hook or self._default_stdin_hook
            t = loop.create_task(_maybe_await(hook(m)))
            stdin_tasks.add(t)
            t.add_done_callback(stdin_tasks.discard)

        reply_fut: asyncio.Future[Message] = loop.create_future()
        self._replies[msg_id] = reply_fut
        self._listeners[msg_id] = lambda m: (
            on_stdin if m["msg_type"] == "input_request" else on_iopub
        )(m)
        try:
            self.shell_channel.send(msg)
            try:
                await asyncio.wait_for(asyncio.gather(asyncio.shield(reply_fut), idle), timeout)
            except asyncio.TimeoutError:
                raise KernelTimeoutError(f"Execution did not finish within {timeout} s") from None
            return reply_fut.result()
        finally:
            self._replies.pop(msg_id, None)
            self._listeners.pop(msg_id, None)
            for t in stdin_tasks:
                t.cancel()

    async def _default_stdin_hook(self, msg: Message) -> None:
        prompt = msg["content"].get("prompt", "")
        password = msg["content"].get("password", False)
        loop = asyncio.get_running_loop()
        if password:
            import getpass

            value = await loop.run_in_executor(None, getpass.getpass, prompt)
        else:
            value = await loop.run_in_executor(None, builtins.input, prompt)
        self.input(value)


def _ignore(msg: Message) -> None:
    pass


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value


def print_output(msg: Message) -> None:
    """Write an iopub message's output to this process's stdout/stderr."""
    import sys

    t, c = msg["msg_type"], msg["content"]
    if t == "stream":
        stream = sys.stdout if c.get("name") == "stdout" else sys.stderr
        stream.write(c.get("text", ""))
        stream.flush()
    elif t in ("display_data", "execute_result"):
        text = c.get("data", {}).get("text/plain")
        if text is not None:
            print(text, flush=True)
    elif t == "error":
        print("\n".join(c.get("traceback", [])), file=sys.stderr, flush=True)

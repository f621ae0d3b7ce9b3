"""The async kernel client: sockets, reply routing, heartbeat, ready handshake.

A thin composition: :mod:`~kernelkeeper.channels` (one receive task per
socket, bounded queues, the heartbeat), :mod:`~kernelkeeper.router`
(replies and execution listeners by msg_id), :mod:`~kernelkeeper.execution`
(run_cell, execute_interactive) and :mod:`~kernelkeeper.protocol` (the
request methods). Each message is parsed once and routed by its parent's
msg_id: to the future of an awaited reply, to the listener of an execution
being collected, or else to the channel's queue, where jupyter_client-style
code (nbclient, papermill) reads it with ``get_msg``.

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
import builtins
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import zmq
import zmq.asyncio

from .channels import Channel, HBChannel, MsgId, _TaskOwner
from .connection import ConnectionInfo
from .errors import KernelDiedError, KernelTimeoutError, NotRunningError
from .execution import (
    CellResult,
    OutputCollector,
    OutputHook,
    StdinHook,
    execute_and_wait,
    output_from_msg,
    print_output,
)
from .managerabc import KernelManagerABC
from .protocol import KernelRequests, execute_content
from .readiness import wait_for_ready
from .router import Router
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


@dataclasses.dataclass
class _Death:
    """What the client knows of its kernel's death."""

    message: str
    exit_code: int | None
    stderr_tail: str
    #: The manager's process generation that died; None: judged by the heartbeat.
    generation: int | None

    def error(self) -> KernelDiedError:
        return KernelDiedError(self.message, self.exit_code, self.stderr_tail)


class _DeathWatch(_TaskOwner):
    """Follows the manager's process: a death fails the client's pending waits."""

    def __init__(self, client: AsyncKernelClient) -> None:
        self.client = client
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self.client.manager is not None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kk-death")

    async def _run(self) -> None:
        kc = self.client
        m = kc.manager
        assert m is not None
        while True:
            generation = m.generation
            if await m.wait():
                continue  # still alive (a manager whose wait has a deadline)
            kc._kernel_died(_Death("Kernel died", m.exit_code, m.stderr_tail(), generation))
            # A restart brings the kernel back in a new process; watch that one.
            await m.wait_restarted()


class AsyncKernelClient(KernelRequests):
    """Talks to one kernel over its five channels, on the running asyncio loop.

    Request methods return the request's msg_id (the jupyter_client
    convention); with ``reply=True`` they wait for and return the reply.

    :param manager: the kernel's process manager, which tells the client when
        the kernel dies (clients made by ``AsyncKernelManager.client()`` get
        one that follows restarts).
    :param hb_max_misses: without a manager, heartbeats missed in a row
        (``hb_channel.time_to_dead`` seconds each) after which the kernel is
        taken for dead; ``None`` never does. A kernel that beats again
        counts as alive again.
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
        hb_max_misses: int | None = 5,
    ) -> None:
        if isinstance(connection_info, (str, os.PathLike)):
            connection_info = ConnectionInfo.from_file(connection_info)
        elif not isinstance(connection_info, ConnectionInfo):
            connection_info = ConnectionInfo.from_dict(connection_info)
        self.connection_info = connection_info
        self.session = session or Session(connection_info.key, connection_info.signature_scheme)
        self.manager = manager
        self.interrupt_mode = interrupt_mode
        self.hb_max_misses = hb_max_misses
        self._context = context or zmq.asyncio.Context.instance()
        self.router = Router()
        self._death: _Death | None = None
        self._iopub_seen: asyncio.Event | None = None
        self.kernel_info_reply: Message | None = None
        #: Called (on the loop) with every iopub status message; the manager tracks busy/idle.
        self.status_hook: Callable[[Message], None] | None = None
        self.shell_channel = Channel(self, "shell")
        self.iopub_channel = Channel(self, "iopub")
        self.stdin_channel = Channel(self, "stdin")
        self.control_channel = Channel(self, "control")
        self.hb_channel = HBChannel(self)
        self._death_watch = _DeathWatch(self)

    def __repr__(self) -> str:
        state = "running" if self.channels_running else "stopped"
        return f"<{type(self).__name__} {self.connection_info.transport} {state}>"

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

        self.router.fail_all(closed)
        for ch in self._socket_channels():
            ch.queue.fail_waiters(closed)

    async def __aenter__(self) -> AsyncKernelClient:
        self.start_channels()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def channels_running(self) -> bool:
        return any(ch.is_alive() for ch in self._socket_channels()) or self.hb_channel.is_alive()

    def _dispatch(self, channel: Channel, msg: Message, nbytes: int = 0) -> None:
        if channel.name == "iopub":
            if self._iopub_seen is not None:
                self._iopub_seen.set()
            if msg["msg_type"] == "iopub_welcome":
                return  # only proves the subscription; nothing for users
            if msg["msg_type"] == "status" and self.status_hook is not None:
                self.status_hook(msg)
        if not self.router.route(channel.name, msg):
            channel.put(msg, nbytes)

    # -- death ----------------------------------------------------------------

    def _kernel_died(self, death: _Death) -> None:
        """The one place a death is recorded and every pending wait failed:
        replies, executions, and ``get_msg`` calls waiting on an empty queue."""
        self._death = death
        n = self.router.fail_all(death.error)
        for ch in self._socket_channels():
            ch.queue.fail_waiters(death.error)
        if n:
            log.info("Kernel died; failed %d pending request(s)", n)

    def _current_death(self) -> _Death | None:
        d = self._death
        if d is not None and d.generation is not None and self.manager is not None:
            if self.manager.generation != d.generation:
                # Restarted since: the death belongs to a process that is gone.
                self._death = d = None
        return d

    def _raise_if_dead(self) -> None:
        d = self._current_death()
        if d is not None:
            raise d.error()

    def _hb_missed(self, missed: int) -> None:
        limit = self.hb_max_misses
        if self.manager is not None or limit is None or missed < limit:
            return  # with a manager, the process is the authority on death
        if self._death is None:
            ttd = self.hb_channel.time_to_dead
            self._kernel_died(
                _Death(
                    f"Kernel stopped answering its heartbeat ({missed} beats of {ttd} s missed)",
                    None,
                    "",
                    None,
                )
            )

    def _hb_beat(self) -> None:
        if self._death is not None and self._death.generation is None:
            self._death = None  # it beats again: alive after all (or restarted)

    def _died_error(self, when: str) -> KernelDiedError:
        m = self.manager
        code = m.exit_code if m is not None else None
        tail = m.stderr_tail() if m is not None else ""
        return KernelDiedError(f"Kernel died {when}", code, tail)

    async def is_alive(self) -> bool:
        """Is the kernel alive: its process if we know it, else its heartbeat."""
        if self.manager is not None:
            return await self.manager.is_alive()
        if self.hb_channel.is_alive():
            return self.hb_channel.is_beating()
        return self._current_death() is None

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
        msg_id = msg["msg_id"]
        fut = self.router.expect_reply(msg_id) if expect_reply else None
        try:
            channel.send(msg)
        except BaseException:
            self.router.forget(msg_id)
            raise
        return msg_id, fut

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
        self._raise_if_dead()
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
        self.router.listeners[msg_id] = _ignore
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
            self.router.replies.pop(msg_id, None)

    def _release_listener(self, msg_id: str) -> None:
        # Status messages of a probe may still be in flight; swallow them a
        # little longer rather than leak them into the iopub queue.
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, self.router.listeners.pop, msg_id, None)

    # -- readiness ------------------------------------------------------------

    async def wait_for_ready(self, timeout: float | None = None) -> Message:
        """Return once the kernel answers kernel_info and our iopub is subscribed.

        Raises :class:`KernelDiedError` at once if the kernel process exits
        meanwhile, :class:`KernelTimeoutError` after ``timeout`` seconds.
        """
        return await wait_for_ready(self, timeout)

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
        messages (default: ask on this terminal). Both hooks run on the
        event loop, so they must be quick; raises :class:`KernelDiedError`
        if the kernel dies first.
        """
        allow = self.allow_stdin if allow_stdin is None else allow_stdin
        content = execute_content(
            code, silent, store_history, user_expressions, allow, stop_on_error
        )
        return await execute_and_wait(
            self, content, timeout, output_hook or print_output, stdin_hook
        )

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

        ``on_output`` sees every iopub message of the execution as it arrives
        (on the event loop). Raises :class:`KernelDiedError` if the kernel
        dies first.
        """
        content = execute_content(
            code, silent, store_history, None, stdin_hook is not None, stop_on_error
        )
        collect = OutputCollector(on_output)
        reply = await execute_and_wait(self, content, timeout, collect, stdin_hook)
        return CellResult(reply, collect.outputs)

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

"""The requests of the messaging protocol, each described once.

A request is its name, its channel, its msg_type, a content builder and its
reply handling. :func:`request` turns a content builder (a method whose
signature is the request's, ending in the keyword-only ``reply`` and
``timeout`` every request takes) into the method that sends it; the
blocking face (:mod:`kernelkeeper.blocking`) is derived from the resulting
async methods, so the two cannot drift apart. :data:`REQUESTS` lists them.

Each sends at once and returns the request's msg_id (awaitable too); with
``reply=True`` it returns a coroutine for the reply instead. A request to a
kernel known to be dead raises :class:`~kernelkeeper.errors.KernelDiedError`
at once. :class:`KernelRequests` is mixed into
:class:`~kernelkeeper.client.AsyncKernelClient`, which provides ``_request``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import queue
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from .errors import KernelTimeoutError
from .session import Message, Session

if TYPE_CHECKING:
    from .channels import Channel
    from .managerabc import KernelManagerABC

__all__ = ["REQUESTS", "KernelRequests", "Request", "execute_content", "request"]

P = ParamSpec("P")
S = TypeVar("S", bound="KernelRequests")


@dataclasses.dataclass(frozen=True)
class Request:
    """One request of the protocol."""

    name: str
    channel: str
    msg_type: str
    #: Builds the content from the method's arguments.
    build: Callable[..., dict[str, Any]]


#: Every request, by method name.
REQUESTS: dict[str, Request] = {}


def request(
    channel: str, msg_type: str
) -> Callable[[Callable[Concatenate[S, P], dict[str, Any]]], Callable[Concatenate[S, P], Any]]:
    """Make a content builder the method that sends the request on ``channel``.

    The method returns the msg_id at once, or with ``reply=True`` a coroutine
    for the reply (``timeout`` seconds at most).
    """

    def decorate(
        build: Callable[Concatenate[S, P], dict[str, Any]],
    ) -> Callable[Concatenate[S, P], Any]:
        REQUESTS[build.__name__] = Request(build.__name__, channel, msg_type, build)

        @functools.wraps(build)
        def send(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Any:
            # reply and timeout are keyword-only in every builder.
            reply = bool(kwargs.get("reply", False))
            timeout: Any = kwargs.get("timeout")
            content = build(self, *args, **kwargs)
            return self._request(channel, msg_type, content, reply, timeout)

        return send

    return decorate


def execute_content(
    code: str,
    silent: bool,
    store_history: bool,
    user_expressions: Mapping[str, str] | None,
    allow_stdin: bool,
    stop_on_error: bool,
) -> dict[str, Any]:
    """The content of an execute_request."""
    return {
        "code": code,
        "silent": silent,
        "store_history": store_history,
        "user_expressions": dict(user_expressions or {}),
        "allow_stdin": allow_stdin,
        "stop_on_error": stop_on_error,
    }


class KernelRequests:
    """execute, kernel_info, complete, ... and the ``get_*_msg`` readers."""

    allow_stdin: bool = True
    interrupt_mode: str
    manager: KernelManagerABC | None
    session: Session
    shell_channel: Channel
    iopub_channel: Channel
    stdin_channel: Channel
    control_channel: Channel

    def _request(
        self,
        channel: str,
        msg_type: str,
        content: Mapping[str, Any],
        reply: bool,
        timeout: float | None,
    ) -> Any:
        raise NotImplementedError

    @request("shell", "execute_request")
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
    ) -> dict[str, Any]:
        """Send an execute_request; the msg_id, or the reply with ``reply=True``."""
        allow = self.allow_stdin if allow_stdin is None else allow_stdin
        return execute_content(code, silent, store_history, user_expressions, allow, stop_on_error)

    @request("shell", "kernel_info_request")
    def kernel_info(self, *, reply: bool = False, timeout: float | None = None) -> dict[str, Any]:
        """Ask for the kernel's info."""
        return {}

    @request("shell", "complete_request")
    def complete(
        self,
        code: str,
        cursor_pos: int | None = None,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Ask for completions at ``cursor_pos`` (default: end of code)."""
        return {"code": code, "cursor_pos": len(code) if cursor_pos is None else cursor_pos}

    @request("shell", "inspect_request")
    def inspect(
        self,
        code: str,
        cursor_pos: int | None = None,
        detail_level: int = 0,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Ask for information about the object at ``cursor_pos``."""
        pos = len(code) if cursor_pos is None else cursor_pos
        return {"code": code, "cursor_pos": pos, "detail_level": detail_level}

    @request("shell", "history_request")
    def history(
        self,
        /,
        raw: bool = True,
        output: bool = False,
        hist_access_type: str = "range",
        *,
        reply: bool = False,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Ask for the kernel's input history."""
        if hist_access_type == "range":
            kwargs.setdefault("session", 0)
            kwargs.setdefault("start", 0)
        return {"raw": raw, "output": output, "hist_access_type": hist_access_type, **kwargs}

    @request("shell", "is_complete_request")
    def is_complete(
        self, code: str, *, reply: bool = False, timeout: float | None = None
    ) -> dict[str, Any]:
        """Ask whether ``code`` is a complete statement."""
        return {"code": code}

    @request("shell", "comm_info_request")
    def comm_info(
        self, target_name: str | None = None, *, reply: bool = False, timeout: float | None = None
    ) -> dict[str, Any]:
        """Ask for the open comms (of ``target_name``)."""
        return {} if target_name is None else {"target_name": target_name}

    @request("control", "shutdown_request")
    def shutdown(
        self, restart: bool = False, *, reply: bool = False, timeout: float | None = None
    ) -> dict[str, Any]:
        """Ask the kernel to shut down, on the control channel."""
        return {"restart": restart}

    def input(self, string: str) -> None:
        """Answer the kernel's input_request."""
        self.stdin_channel.send(self.session.msg("input_reply", {"value": string}))

    async def interrupt(self, *, reply: bool = False, timeout: float | None = None) -> Any:
        """Interrupt the kernel: by message or by signal, as its spec asks."""
        if self.interrupt_mode == "message" or self.manager is None:
            return await self._request("control", "interrupt_request", {}, reply, timeout)
        await self.manager.interrupt()
        return None

    async def _async_recv_reply(
        self, msg_id: str, timeout: float | None = None, channel: str = "shell"
    ) -> Message:
        """Read the shell (or control) queue until the reply to ``msg_id``; other
        replies are dropped. jupyter_client's private name, which its own test
        suite and some plug-ins call; :class:`KernelTimeoutError` after ``timeout``."""
        ch = self.control_channel if channel == "control" else self.shell_channel
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                reply = await ch.get_msg(left)
            except queue.Empty:
                raise KernelTimeoutError(f"No reply to {msg_id} within {timeout} s") from None
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply

    async def get_shell_msg(self, timeout: float | None = None, *, block: bool = True) -> Message:
        """The next unclaimed shell message; :class:`queue.Empty` after ``timeout``."""
        return await self.shell_channel.get_msg(timeout, block=block)

    async def get_iopub_msg(self, timeout: float | None = None, *, block: bool = True) -> Message:
        """The next unclaimed iopub message; :class:`queue.Empty` after ``timeout``."""
        return await self.iopub_channel.get_msg(timeout, block=block)

    async def get_stdin_msg(self, timeout: float | None = None, *, block: bool = True) -> Message:
        """The next unclaimed stdin message; :class:`queue.Empty` after ``timeout``."""
        return await self.stdin_channel.get_msg(timeout, block=block)

    async def get_control_msg(self, timeout: float | None = None, *, block: bool = True) -> Message:
        """The next unclaimed control message; :class:`queue.Empty` after ``timeout``."""
        return await self.control_channel.get_msg(timeout, block=block)

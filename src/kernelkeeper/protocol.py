"""The request methods of the messaging protocol, as jupyter_client names them.

Each sends at once and returns the request's msg_id (awaitable too); with
``reply=True`` it returns a coroutine for the reply instead. A request to a
kernel known to be dead raises :class:`~kernelkeeper.errors.KernelDiedError`
at once. :class:`KernelRequests` is mixed into
:class:`~kernelkeeper.client.AsyncKernelClient`, which provides ``_request``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .session import Message, Session

if TYPE_CHECKING:
    from .channels import Channel
    from .managerabc import KernelManagerABC

__all__ = ["KernelRequests", "execute_content"]


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
        channel: Channel,
        msg_type: str,
        content: Mapping[str, Any],
        reply: bool,
        timeout: float | None,
    ) -> Any:
        raise NotImplementedError

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
        allow = self.allow_stdin if allow_stdin is None else allow_stdin
        content = execute_content(
            code, silent, store_history, user_expressions, allow, stop_on_error
        )
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
        """The next unclaimed shell message; :class:`queue.Empty` after ``timeout``."""
        return await self.shell_channel.get_msg(timeout)

    async def get_iopub_msg(self, timeout: float | None = None) -> Message:
        """The next unclaimed iopub message; :class:`queue.Empty` after ``timeout``."""
        return await self.iopub_channel.get_msg(timeout)

    async def get_stdin_msg(self, timeout: float | None = None) -> Message:
        """The next unclaimed stdin message; :class:`queue.Empty` after ``timeout``."""
        return await self.stdin_channel.get_msg(timeout)

    async def get_control_msg(self, timeout: float | None = None) -> Message:
        """The next unclaimed control message; :class:`queue.Empty` after ``timeout``."""
        return await self.control_channel.get_msg(timeout)

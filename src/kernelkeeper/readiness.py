"""The ready handshake: a kernel_info reply plus a confirmed iopub subscription.

A reply proves the shell channel; output needs the iopub subscription in
place too, which kernels announce (``iopub_welcome``) or which the status
messages of another probe show. Runs on the client's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from .channels import Channel
from .errors import KernelDiedError, KernelTimeoutError
from .managerabc import KernelManagerABC
from .router import Router
from .session import Message


class ReadinessHost(Protocol):
    """What the handshake needs of its client (described here so that this
    module never imports the client)."""

    manager: KernelManagerABC | None
    router: Router
    shell_channel: Channel
    kernel_info_reply: Message | None
    _iopub_seen: asyncio.Event | None

    @property
    def channels_running(self) -> bool: ...

    def start_channels(self) -> None: ...

    def _died_error(self, when: str) -> KernelDiedError: ...

    def _send(
        self,
        channel: Channel,
        msg_type: str,
        content: Mapping[str, Any],
        *,
        expect_reply: bool = False,
    ) -> tuple[str, asyncio.Future[Message] | None]: ...

    def _release_listener(self, msg_id: str) -> None: ...


__all__ = ["wait_for_ready"]


def _ignore(msg: Message) -> None:
    pass


async def wait_for_ready(kc: ReadinessHost, timeout: float | None = None) -> Message:
    """See :meth:`AsyncKernelClient.wait_for_ready`."""
    if not kc.channels_running:
        kc.start_channels()
    assert kc._iopub_seen is not None
    # Prove the subscription anew: after a restart the old proof is stale.
    kc._iopub_seen.clear()
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    died: asyncio.Future[Any] | None = None
    if kc.manager is not None:
        died = asyncio.ensure_future(kc.manager.wait())
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
                raise kc._died_error("before it was ready")
            return fut.done() and not fut.cancelled()
        finally:
            if not fut.done():
                fut.cancel()

    def ask() -> asyncio.Future[Message]:
        # Not refused on a heartbeat death: waiting for a kernel to come
        # back is what this call is for. A process death is caught by `died`.
        msg_id, fut = kc._send(kc.shell_channel, "kernel_info_request", {}, expect_reply=True)
        sent.append(msg_id)
        # The busy/idle status of our own probes is not user output.
        kc.router.listeners[msg_id] = _ignore
        assert fut is not None
        return fut

    try:
        reply_fut = ask()
        if not await race(reply_fut, remaining()):
            raise KernelTimeoutError(f"Kernel did not reply to kernel_info within {timeout} s")
        kc.kernel_info_reply = reply_fut.result()
        # A reply proves the shell; output needs the iopub subscription in
        # place too. Kernels announce it (iopub_welcome) or, failing that,
        # the status messages of another probe will show it.
        while not kc._iopub_seen.is_set():
            left = remaining()
            if left is not None and left <= 0:
                raise KernelTimeoutError("Kernel iopub did not connect in time")
            if await race(kc._iopub_seen.wait(), 0.25 if left is None else min(left, 0.25)):
                break
            ask()
        return kc.kernel_info_reply
    finally:
        if died is not None:
            died.cancel()
        for msg_id in sent:
            kc.router.replies.pop(msg_id, None)
            kc._release_listener(msg_id)

"""The ready handshake: a kernel_info reply plus a confirmed iopub subscription.

A reply proves the shell channel; output needs the iopub subscription in
place too, which kernels announce (``iopub_welcome``) or which the status
messages of another probe show. Runs on the client's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .channels import Channel
from .errors import KernelNotReadyError
from .liveness import Liveness
from .managerabc import KernelManagerABC
from .router import Router, Subscription
from .session import Message, Session


class ReadinessHost(Protocol):
    """What the handshake needs of its client (described here so that this
    module never imports the client)."""

    manager: KernelManagerABC | None
    router: Router
    session: Session
    shell_channel: Channel
    liveness: Liveness
    kernel_info_reply: Message | None
    #: Set by the client on every iopub message: the subscription is in place.
    iopub_confirmed: asyncio.Event
    #: A proof of readiness made before the client was handed out (see below).
    ready_proof: int | None
    #: Told the reply that ends a successful handshake (the manager's state).
    ready_hook: Callable[[Message], None] | None

    @property
    def channels_running(self) -> bool: ...

    def start_channels(self) -> None: ...


__all__ = ["wait_for_ready"]


async def wait_for_ready(kc: ReadinessHost, timeout: float | None = None) -> Message:
    """See :meth:`AsyncKernelClient.wait_for_ready`."""
    proof, kc.ready_proof = kc.ready_proof, None
    if proof is not None and await _still_proven(kc, proof):
        # A warm pool handed this client out ready: the kernel answered its
        # kernel_info and confirmed the iopub subscription on these very
        # sockets, its heartbeat has been watched since, and its process is
        # the same and alive. One use only; the next call probes again.
        assert kc.kernel_info_reply is not None
        return kc.kernel_info_reply
    if not kc.channels_running:
        kc.start_channels()
    seen = kc.iopub_confirmed
    # Prove the subscription anew: after a restart the old proof is stale.
    seen.clear()
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    died: asyncio.Future[Any] | None = None
    if kc.manager is not None:
        died = asyncio.ensure_future(kc.manager.wait())
    probes: list[Subscription] = []

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
                raise kc.liveness.died_error("before it was ready")
            return fut.done() and not fut.cancelled()
        finally:
            if not fut.done():
                fut.cancel()

    def ask() -> asyncio.Future[Message]:
        # Not refused on a heartbeat death: waiting for a kernel to come
        # back is what this call is for. A process death is caught by `died`.
        msg = kc.session.msg("kernel_info_request", {})
        # Muted: the busy/idle status of our own probes is not user output.
        sub = kc.router.subscribe(msg["msg_id"], mute=True)
        probes.append(sub)
        kc.shell_channel.send(msg)
        assert sub.reply is not None
        return sub.reply

    try:
        reply_fut = ask()
        if not await race(reply_fut, remaining()):
            raise KernelNotReadyError(f"Kernel did not reply to kernel_info within {timeout} s")
        kc.kernel_info_reply = reply_fut.result()
        # A reply proves the shell; output needs the iopub subscription in
        # place too. Kernels announce it (iopub_welcome) or, failing that,
        # the status messages of another probe will show it.
        while not seen.is_set():
            left = remaining()
            if left is not None and left <= 0:
                raise KernelNotReadyError("Kernel iopub did not connect in time")
            if await race(seen.wait(), 0.25 if left is None else min(left, 0.25)):
                break
            ask()
        if kc.ready_hook is not None:
            kc.ready_hook(kc.kernel_info_reply)
        return kc.kernel_info_reply
    finally:
        if died is not None:
            died.cancel()
        for sub in probes:
            sub.close()


async def _still_proven(kc: ReadinessHost, generation: int) -> bool:
    m = kc.manager
    return (
        m is not None
        and kc.channels_running
        and kc.kernel_info_reply is not None
        and kc.iopub_confirmed.is_set()
        and kc.liveness.current() is None
        and m.generation == generation
        and await m.is_alive()
    )

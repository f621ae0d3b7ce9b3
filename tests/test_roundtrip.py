"""The lean request→reply path: one crossing for blocking requests, and the
channel's own non-blocking reads and writes.

A blocking request is sent by one callback on the loop and its reply releases
the caller through a :class:`~kernelkeeper.loopthread.Handoff`. None of that
may lose a message, leave a subscription behind, or keep a waiter waiting
when the kernel dies.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
import zmq.asyncio

from helpers import wait_for
from kernelkeeper import BlockingKernelClient, KernelManager, start_new_kernel
from kernelkeeper.channels import Channel, ChannelLink
from kernelkeeper.connection import ConnectionInfo
from kernelkeeper.errors import KernelDiedError, KernelTimeoutError
from kernelkeeper.loopthread import Handoff
from kernelkeeper.session import Message, Session

pytestmark = pytest.mark.timeout(120)

READY = 60.0
REPLY = 30.0


@pytest.fixture
def bkernel() -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km, kc = start_new_kernel(startup_timeout=READY)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def statuses_of(kc: BlockingKernelClient, msg_id: str) -> list[str]:
    """The execution states of ``msg_id`` read from iopub, up to its idle."""
    states: list[str] = []
    while "idle" not in states:
        m = kc.get_iopub_msg(timeout=REPLY)
        if m["msg_type"] == "status" and m["parent_header"].get("msg_id") == msg_id:
            states.append(m["content"]["execution_state"])
    return states


# -- blocking requests -------------------------------------------------------------------


def test_blocking_replies_leave_every_iopub_message_readable(
    bkernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _, kc = bkernel
    for _ in range(5):
        reply = kc.kernel_info(reply=True, timeout=REPLY)
        assert reply["msg_type"] == "kernel_info_reply"
        parent = reply["parent_header"]["msg_id"]
        # Deferred while the reply was awaited; get_msg takes them in at once.
        assert statuses_of(kc, parent) == ["busy", "idle"]
    reply = kc.execute("1+1", reply=True, timeout=REPLY)
    parent = reply["parent_header"]["msg_id"]
    seen: list[str] = []
    while True:
        m = kc.get_iopub_msg(timeout=REPLY)
        if m["parent_header"].get("msg_id") != parent:
            continue
        seen.append(m["msg_type"])
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            break
    assert seen == ["status", "execute_input", "execute_result", "status"]
    assert kc.async_client.router.awaiting == 0


def test_blocking_timeout_withdraws_and_the_late_reply_is_queued(
    bkernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _, kc = bkernel
    router = kc.async_client.router
    with pytest.raises(KernelTimeoutError):
        kc.execute("import time; time.sleep(1)", reply=True, timeout=0.1)
    wait_for(lambda: router.awaiting == 0 and not router.replies, REPLY)
    late = kc.get_shell_msg(timeout=REPLY)
    assert late["msg_type"] == "execute_reply" and late["content"]["status"] == "ok"
    # The client still works, on the same path.
    assert kc.kernel_info(reply=True, timeout=REPLY)["msg_type"] == "kernel_info_reply"


def test_blocking_request_without_reply_returns_the_msg_id(
    bkernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _, kc = bkernel
    msg_id = kc.kernel_info()
    assert isinstance(msg_id, str) and len(msg_id) == 32
    reply = kc.get_shell_msg(timeout=REPLY)
    assert reply["parent_header"]["msg_id"] == msg_id
    with pytest.raises(TypeError):
        kc.complete()  # a builder's own error reaches the caller unchanged


def test_blocking_waiter_fails_when_the_kernel_dies(
    bkernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _, kc = bkernel
    with pytest.raises(KernelDiedError):
        kc.execute("import os; os._exit(3)", reply=True, timeout=REPLY)
    assert kc.async_client.router.awaiting == 0
    with pytest.raises(KernelDiedError):
        kc.kernel_info(reply=True, timeout=REPLY)


def test_blocking_requests_from_many_threads(
    bkernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _, kc = bkernel
    errors: list[BaseException] = []
    ids: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            for _ in range(10):
                r = kc.kernel_info(reply=True, timeout=REPLY)
                with lock:
                    ids.append(r["parent_header"]["msg_id"])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(REPLY)
    assert not errors and len(set(ids)) == 40


# -- the hand-off ------------------------------------------------------------------------


def test_handoff_first_value_wins_and_times_out() -> None:
    h = Handoff()
    assert h.wait(0) is False
    h.set_result(1)
    h.set_exception(RuntimeError("late"))
    assert h.wait(0) is True and h.result() == 1
    e = Handoff()
    e.set_exception(KernelTimeoutError("x"))
    e.set_result(2)
    assert e.wait(None)
    with pytest.raises(KernelTimeoutError):
        e.result()


# -- sends past the high-water mark ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sends_past_the_high_water_mark_go_out_in_order() -> None:
    port = _free_port()
    info = ConnectionInfo(shell_port=port, key=b"k" * 16)
    session = Session(info.key)
    ctx = zmq.asyncio.Context()
    got: list[Message] = []
    arrived = asyncio.Event()

    def deliver(ch: Channel, m: Message, n: int) -> None:
        got.append(m)
        arrived.set()

    link = ChannelLink(ctx, session, info, deliver)
    ch = Channel(link, "shell")
    ch.start()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    try:
        assert ch.socket is not None
        hwm = int(ch.socket.getsockopt(zmq.SNDHWM))
        n = hwm + 50
        # Nobody listens yet: zmq queues up to its mark, the channel the rest.
        for i in range(n):
            ch.send(session.msg("kernel_info_request", {"i": i}))
        assert ch._outbox  # the path under test was taken
        router.bind(f"tcp://127.0.0.1:{port}")
        seen: list[Any] = []
        ident = b""
        while len(seen) < n:
            frames = await asyncio.wait_for(router.recv_multipart(), REPLY)
            ident = frames[0]
            seen.append(session.deserialize(frames[1:])[1]["content"]["i"])
        assert seen == list(range(n))
        assert not ch._outbox
        # And the reader still takes replies in.
        reply = session.msg("kernel_info_reply", {"status": "ok"})
        await router.send_multipart(session.serialize(reply, ident))
        await asyncio.wait_for(arrived.wait(), REPLY)
        assert got[0]["msg_type"] == "kernel_info_reply"
    finally:
        ch.stop()
        router.close()
        ctx.term()

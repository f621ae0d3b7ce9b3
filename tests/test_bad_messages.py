"""Forged, malformed and replayed messages reaching a client are dropped and
counted, and the client keeps working.

Most tests stand up a fake kernel: a ROUTER (shell) and an XPUB (iopub) bound
on 127.0.0.1, with a known key. The XPUB reports the client's subscription,
so the test knows when published messages can reach it. zmq keeps the order
of messages on one connection, so once the client has delivered the valid
message sent last, every bad one before it has been seen and dropped.

The last test injects bad messages into the iopub socket of a client that is
talking to a real ipykernel (a SUB socket may connect to a second publisher),
including a replay of a genuine message the kernel sent earlier.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import zmq
import zmq.asyncio

from kernelkeeper import AsyncKernelClient, AsyncKernelManager, ConnectionInfo, KernelTimeoutError
from kernelkeeper.connection import new_key
from kernelkeeper.session import DELIM, Session, pack

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 10.0
Msg = dict[str, Any]


@dataclass
class FakeKernel:
    key: bytes
    session: Session  # signs as the kernel would
    shell: zmq.asyncio.Socket  # ROUTER
    iopub: zmq.asyncio.Socket  # XPUB
    info: ConnectionInfo

    async def recv_request(self) -> tuple[bytes, Msg]:
        """The next shell request (verified with the key) and the sender's identity."""
        frames = await asyncio.wait_for(self.shell.recv_multipart(), TIMEOUT)
        idents, msg = self.session.deserialize(frames)
        assert len(idents) == 1
        return idents[0], msg

    async def wait_subscribed(self) -> None:
        """Block until a client's SUB has subscribed (XPUB reports it)."""
        sub = await asyncio.wait_for(self.iopub.recv(), TIMEOUT)
        assert sub[:1] == b"\x01"

    def reply(self, msg_type: str, content: Msg, parent: Msg | None) -> Msg:
        return self.session.msg(msg_type, content, parent=parent)


@pytest.fixture
async def fake() -> AsyncIterator[FakeKernel]:
    ctx = zmq.asyncio.Context()
    shell = ctx.socket(zmq.ROUTER)
    iopub = ctx.socket(zmq.XPUB)
    for s in (shell, iopub):
        s.linger = 0
    try:
        shell_port = shell.bind_to_random_port("tcp://127.0.0.1")
        iopub_port = iopub.bind_to_random_port("tcp://127.0.0.1")
        key = new_key()
        info = ConnectionInfo(shell_port=shell_port, iopub_port=iopub_port, key=key)
        yield FakeKernel(key, Session(key, username="kernel"), shell, iopub, info)
    finally:
        shell.close()
        iopub.close()
        ctx.term()


@pytest.fixture
async def client(fake: FakeKernel) -> AsyncIterator[AsyncKernelClient]:
    kc = AsyncKernelClient(fake.info)
    kc.start_channels(stdin=False, control=False, hb=False)
    try:
        yield kc
    finally:
        await kc.aclose()


def garbage(n: int) -> list[list[bytes]]:
    """Random frame lists (no delimiter frame: a random 9-byte match is hopeless)."""
    out = []
    for i in range(n):
        out.append([os.urandom(1 + (i * 37) % 200) for _ in range(1 + i % 7)])
    return out


def bad_variants(s: Session, msg: Msg) -> dict[str, list[bytes]]:
    """One of each kind of bad message, all about ``msg`` (same parent and type).

    ``s`` holds the right key: some variants are validly signed but malformed.
    """
    good = s.serialize(msg)
    parts = good[2:6]
    tampered = list(good)
    tampered[5] = pack({**msg["content"], "marker": "tampered"})
    no_type = [pack({"msg_id": "x"}), *parts[1:]]
    bad_json = [parts[0], parts[1], parts[2], b'{"marker": "broken']
    return {
        "plain garbage": [b"this is not a message"],
        "too few frames": [DELIM, b"sig", b"{}", b"{}"],
        "wrong key": Session(b"not-the-key").serialize(msg),
        "unsigned": Session(b"").serialize(msg),
        "tampered content": tampered,
        "signed malformed JSON": [DELIM, s.sign(bad_json), *bad_json],
        "signed header without msg_type": [DELIM, s.sign(no_type), *no_type],
        "signed non-object content": [DELIM, s.sign([*parts[:3], b"[1]"]), *parts[:3], b"[1]"],
    }


EXPECTED_REASONS = {
    "no delimiter frame": 1,
    "too few frames after delimiter (3)": 1,
    "invalid signature": 2,  # wrong key, tampered
    "unsigned message": 1,
    "malformed JSON frame": 1,
    "header is not an object with a msg_type": 1,
    "content must be an object": 1,
}


async def test_shell_forged_reply_does_not_resolve_request(
    fake: FakeKernel, client: AsyncKernelClient
) -> None:
    task = asyncio.ensure_future(client.kernel_info(reply=True, timeout=TIMEOUT))
    ident, req = await fake.recv_request()
    assert req["msg_type"] == "kernel_info_request"
    assert req["header"]["session"] == client.session.session

    forged = fake.reply("kernel_info_reply", {"status": "ok", "marker": "forged"}, req)
    for frames in bad_variants(fake.session, forged).values():
        await fake.shell.send_multipart([ident, *frames])
    for frames in garbage(20):
        await fake.shell.send_multipart([ident, *frames])
    assert not task.done()
    genuine = fake.reply("kernel_info_reply", {"status": "ok", "marker": "genuine"}, req)
    await fake.shell.send_multipart([ident, *fake.session.serialize(genuine)])

    reply = await asyncio.wait_for(task, TIMEOUT)
    assert reply["content"] == {"status": "ok", "marker": "genuine"}
    assert reply["msg_id"] == genuine["msg_id"]
    assert client.dropped == len(EXPECTED_REASONS) + 1 + 20
    expected = dict(EXPECTED_REASONS)
    expected["no delimiter frame"] += 20
    assert dict(client.session.dropped) == expected
    assert client.session.dropped_total == client.dropped
    assert client.shell_channel.is_alive()
    # Nothing bad reached the queue either.
    assert await client.shell_channel.msg_ready() is False


async def test_shell_replay_and_queue_path(fake: FakeKernel, client: AsyncKernelClient) -> None:
    """jupyter_client style: request returns a msg_id, replies come from get_shell_msg."""
    msg_id = await client.kernel_info()
    ident, req = await fake.recv_request()
    assert req["msg_id"] == msg_id

    first = fake.reply("kernel_info_reply", {"status": "ok", "n": 1}, req)
    first_frames = fake.session.serialize(first)
    await fake.shell.send_multipart([ident, *first_frames])
    await fake.shell.send_multipart([ident, *first_frames])  # replayed
    await fake.shell.send_multipart([ident, b"routing-junk", *first_frames])  # replay, new ident
    for frames in garbage(5):
        await fake.shell.send_multipart([ident, *frames])
    second = fake.reply("kernel_info_reply", {"status": "ok", "n": 2}, req)
    await fake.shell.send_multipart([ident, *fake.session.serialize(second)])

    got1 = await client.get_shell_msg(timeout=TIMEOUT)
    got2 = await client.get_shell_msg(timeout=TIMEOUT)
    assert (got1["content"]["n"], got2["content"]["n"]) == (1, 2)
    assert got1["parent_header"]["msg_id"] == msg_id
    assert client.session.dropped["duplicate signature (replayed message)"] == 2
    assert client.dropped == 2 + 5
    with pytest.raises(asyncio.QueueEmpty):
        client.shell_channel.queue.get_nowait()


async def test_iopub_bad_messages_dropped(fake: FakeKernel, client: AsyncKernelClient) -> None:
    await fake.wait_subscribed()
    parent = fake.session.msg("execute_request", {"code": ""})
    forged = fake.reply("stream", {"name": "stdout", "text": "FORGED"}, parent)
    for frames in bad_variants(fake.session, forged).values():
        await fake.iopub.send_multipart([b"stream", *frames])  # with a topic frame
    for frames in garbage(50):
        await fake.iopub.send_multipart(frames)
    await fake.iopub.send_multipart([os.urandom(1 << 20)])  # a 1 MiB junk frame
    genuine = fake.reply("stream", {"name": "stdout", "text": "genuine"}, parent)
    frames = fake.session.serialize(genuine, ident=b"kernel.abc.stream")
    await fake.iopub.send_multipart(frames)
    await fake.iopub.send_multipart(frames)  # replay

    status = fake.reply("status", {"execution_state": "idle"}, parent)
    await fake.iopub.send_multipart(fake.session.serialize(status))

    got = await client.get_iopub_msg(timeout=TIMEOUT)
    assert got["content"] == {"name": "stdout", "text": "genuine"}
    got = await client.get_iopub_msg(timeout=TIMEOUT)
    assert got["msg_type"] == "status"
    expected = dict(EXPECTED_REASONS)
    expected["no delimiter frame"] += 51
    expected["duplicate signature (replayed message)"] = 1
    assert dict(client.session.dropped) == expected
    assert client.dropped == sum(expected.values())
    assert await client.iopub_channel.msg_ready() is False
    assert client.iopub_channel.is_alive()


async def test_run_cell_ignores_forged_output_and_reply(
    fake: FakeKernel, client: AsyncKernelClient
) -> None:
    """An execution in progress: forged outputs and a forged reply carrying the
    right parent must not reach the collected outputs or finish the cell."""
    await fake.wait_subscribed()
    run = asyncio.ensure_future(client.run_cell("print('hi')", timeout=TIMEOUT))
    ident, req = await fake.recv_request()
    assert req["msg_type"] == "execute_request"
    assert req["content"]["code"] == "print('hi')"

    async def publish(msg: Msg) -> None:
        await fake.iopub.send_multipart(fake.session.serialize(msg))

    await publish(fake.reply("status", {"execution_state": "busy"}, req))
    forged_out = fake.reply("stream", {"name": "stdout", "text": "FORGED\n"}, req)
    forged_idle = fake.reply("status", {"execution_state": "idle"}, req)
    for bad in (forged_out, forged_idle):
        for frames in bad_variants(fake.session, bad).values():
            await fake.iopub.send_multipart(frames)
    forged_reply = fake.reply("execute_reply", {"status": "error", "ename": "Forged"}, req)
    for frames in bad_variants(fake.session, forged_reply).values():
        await fake.shell.send_multipart([ident, *frames])
    await publish(fake.reply("stream", {"name": "stdout", "text": "hi\n"}, req))
    await publish(fake.reply("status", {"execution_state": "idle"}, req))
    assert not run.done()
    reply = fake.reply("execute_reply", {"status": "ok", "execution_count": 1}, req)
    await fake.shell.send_multipart([ident, *fake.session.serialize(reply)])

    res = await asyncio.wait_for(run, TIMEOUT)
    assert res.status == "ok"
    assert res.outputs == [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]
    assert client.dropped == 3 * len(bad_variants(fake.session, reply))


async def test_run_cell_waits_for_genuine_reply_until_timeout(
    fake: FakeKernel, client: AsyncKernelClient
) -> None:
    """Only forged replies arrive: the call times out instead of accepting one."""
    await fake.wait_subscribed()
    task = asyncio.ensure_future(client.execute("x", reply=True, timeout=0.3))
    ident, req = await fake.recv_request()
    forged = fake.reply("execute_reply", {"status": "ok"}, req)
    await fake.shell.send_multipart([ident, *Session(b"bad").serialize(forged)])
    await fake.shell.send_multipart([ident, *Session(b"").serialize(forged)])
    with pytest.raises(KernelTimeoutError):
        await task
    assert client.dropped == 2


async def test_bad_messages_against_real_kernel_client() -> None:
    """A client of a real ipykernel gets forged and replayed messages on its iopub
    socket (connected to a second, hostile publisher); its executions are not
    affected and the genuine kernel output is all it reports."""
    km = AsyncKernelManager()
    await km.start_kernel()
    kc = km.client()
    ctx = zmq.asyncio.Context()
    hostile = ctx.socket(zmq.XPUB)
    spy = ctx.socket(zmq.SUB)
    for s in (hostile, spy):
        s.linger = 0
    try:
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        assert km.connection_info is not None
        key = km.connection_info.key
        signer = Session(key, username="kernel")

        # A spy subscribes to the kernel's iopub to capture genuine frames. It is
        # connected once it sees the status messages of a request of ours (the
        # kernel's iopub_welcome is not reliable for a second subscriber to b"").
        spy.setsockopt(zmq.SUBSCRIBE, b"")
        spy.connect(km.connection_info.url("iopub"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not await spy.poll(100):
            assert loop.time() < deadline, "the spy never received anything"
            await kc.kernel_info(reply=True, timeout=TIMEOUT)  # publishes busy/idle
        res = await kc.run_cell("print('genuine one')", timeout=TIMEOUT)
        assert res.stdout == "genuine one\n"
        run_id = res.reply["parent_header"]["msg_id"]
        captured: list[bytes] | None = None
        while captured is None:
            frames = await asyncio.wait_for(spy.recv_multipart(), TIMEOUT)
            m = Session(key, check_replay=False).feed(frames)
            if m and m["msg_type"] == "stream" and m["parent_header"]["msg_id"] == run_id:
                captured = frames
        assert kc.dropped == 0

        port = hostile.bind_to_random_port("tcp://127.0.0.1")
        assert kc.iopub_channel.socket is not None
        kc.iopub_channel.socket.connect(f"tcp://127.0.0.1:{port}")
        sub = await asyncio.wait_for(hostile.recv(), TIMEOUT)
        assert sub[:1] == b"\x01"

        injected = 0

        async def hook(req: Msg) -> None:
            # The kernel is waiting in input(): attack its running execution.
            nonlocal injected
            parent = {"header": req["parent_header"]}
            forged = signer.msg("stream", {"name": "stdout", "text": "FORGED\n"}, parent=parent)
            forged_idle = signer.msg("status", {"execution_state": "idle"}, parent=parent)
            for bad in (forged, forged_idle):
                for frames in bad_variants(signer, bad).values():
                    await hostile.send_multipart(frames)
                    injected += 1
            for frames in garbage(10):
                await hostile.send_multipart(frames)
                injected += 1
            assert captured is not None
            await hostile.send_multipart(captured)  # replay of a genuine kernel message
            injected += 1
            sentinel = signer.msg(
                "stream",
                {"name": "stdout", "text": "sentinel"},
                parent={"header": {"msg_id": "sentinel"}},
            )
            await hostile.send_multipart(signer.serialize(sentinel))
            while True:  # the sentinel came last on that connection: all bad ones are seen
                m = await kc.get_iopub_msg(timeout=TIMEOUT)
                if m["parent_header"].get("msg_id") == "sentinel":
                    break
            kc.input("real answer")

        res = await kc.run_cell("a = input('?')\nprint('got', a)", stdin_hook=hook, timeout=TIMEOUT)
        assert res.status == "ok"
        assert res.outputs == [
            {"output_type": "stream", "name": "stdout", "text": "got real answer\n"}
        ]
        assert kc.dropped == injected
        assert kc.session.dropped["duplicate signature (replayed message)"] == 1
        # Still fully working afterwards.
        res = await kc.run_cell("print('after')", timeout=TIMEOUT)
        assert res.stdout == "after\n"
        assert kc.iopub_channel.is_alive() and kc.shell_channel.is_alive()
        assert await kc.iopub_channel.msg_ready() is False
    finally:
        await kc.aclose()
        hostile.close()
        spy.close()
        ctx.term()
        await km.shutdown_kernel(now=True)

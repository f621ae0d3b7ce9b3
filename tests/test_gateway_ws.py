"""The gateway's channels WebSocket with real kernels: the three wire formats with
buffers, stdin, session_id replacement and replay, restarts, deletion, bad frames,
size limits, slow clients and culling."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gwhelpers import AUTH, TOKEN, WsKernel, config, running, start_kernel
from kernelkeeper.gateway import Gateway
from kernelkeeper.gateway_ws import CLOSE_KERNEL_GONE, CLOSE_REPLACED

pytestmark = pytest.mark.timeout(300)

ECHO_TARGET = """
def _target(comm, msg):
    @comm.on_msg
    def _echo(m):
        comm.send({"n": len(m["buffers"])}, buffers=[bytes(b)[::-1] for b in m["buffers"]])
get_ipython().kernel.comm_manager.register_target("echo", _target)
"""


@pytest.fixture
async def gw(request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    kw = getattr(request, "param", {})
    async for g in running(config(**kw)):
        yield g


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as s:
        yield s


async def poll(pred: Any, timeout: float = 30.0) -> Any:
    """Wait until ``pred()`` is truthy (a condition, polled with a deadline)."""
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(0.02)
    return value


async def closed_with(kc: WsKernel, timeout: float = 30.0) -> tuple[int, list[dict[str, Any]]]:
    """Read until the server closes; (close code, messages read before it)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await asyncio.wait_for(kc.ws.receive(), max(0.01, deadline - time.monotonic()))
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return int(msg.data), got
        assert msg.type not in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg
        from gwhelpers import decode

        got.append(decode(msg, kc.v1))


@pytest.mark.parametrize("fmt", ["legacy", "v1"])
async def test_formats_execute_and_buffers_both_ways(
    gw: Gateway, http: aiohttp.ClientSession, fmt: str
) -> None:
    kid = await start_kernel(http, gw)
    kc = await WsKernel.connect(http, gw, kid, v1=fmt == "v1")
    assert kc.v1 == (fmt == "v1")
    out, reply = await kc.execute("print(6*7)")
    assert out == "42\n" and reply["content"]["status"] == "ok"
    assert reply["channel"] == "shell"
    _, reply = await kc.execute(ECHO_TARGET)
    assert reply["content"]["status"] == "ok", reply
    await kc.send("comm_open", {"comm_id": "c1", "target_name": "echo", "data": {}})
    bufs = [b"abc", b"\x00\xff" * 1000, b""]
    await kc.send("comm_msg", {"comm_id": "c1", "data": {}}, buffers=bufs)
    echo = await kc.until(lambda d: d["msg_type"] == "comm_msg")
    assert echo["channel"] == "iopub"
    assert echo["content"]["data"] == {"n": 3}
    assert [bytes(b) for b in echo["buffers"]] == [b[::-1] for b in bufs]
    await kc.close()


async def test_one_iopub_subscription_per_kernel(gw: Gateway, http: aiohttp.ClientSession) -> None:
    # The bridge reads iopub through the manager's own subscription (its activity
    # tracker): one connection to the kernel's iopub port from this process, for
    # a new kernel, after a restart, and after a WebSocket came and went.
    import psutil

    kid = await start_kernel(http, gw)

    def iopub_connections() -> int:
        info = gw.mkm.get_kernel(kid).connection_info
        assert info is not None
        mine = psutil.Process().net_connections(kind="tcp")
        return sum(1 for c in mine if c.raddr and c.raddr.port == info.iopub_port)

    for step in ("new", "restarted"):
        kc = await WsKernel.connect(http, gw, kid)
        out, _ = await kc.execute("print('seen')")
        assert out == "seen\n", step
        assert iopub_connections() == 1, step
        await kc.close()
        if step == "new":
            r = await http.post(f"{gw.url}api/kernels/{kid}/restart", headers=AUTH)
            assert r.status == 200
    assert iopub_connections() == 1


async def test_stdin_reaches_the_session(gw: Gateway, http: aiohttp.ClientSession) -> None:
    kid = await start_kernel(http, gw)
    kc = await WsKernel.connect(http, gw, kid)
    mid = await kc.send(
        "execute_request", {"code": "print(input('name? ') * 2)", "allow_stdin": True}
    )
    req = await kc.until(lambda d: d["msg_type"] == "input_request")
    assert req["channel"] == "stdin" and req["content"]["prompt"] == "name? "
    await kc.send("input_reply", {"value": "ab"}, channel="stdin")
    out, _ = await kc.collect(mid)
    assert out == "abab\n"
    await kc.close()


async def test_control_channel_answers_each_session(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    # A session's control socket is opened on its first control message.
    kid = await start_kernel(http, gw)
    first = await WsKernel.connect(http, gw, kid)
    second = await WsKernel.connect(http, gw, kid)
    for kc in (first, second, first):
        mid = await kc.send("kernel_info_request", {}, channel="control")

        def answers(d: dict[str, Any], mid: str = mid) -> bool:
            return d["parent_header"].get("msg_id") == mid and d["msg_type"] == "kernel_info_reply"

        reply = await kc.until(answers)
        assert reply["channel"] == "control"
    await first.close()
    await second.close()


async def test_connections_are_counted(gw: Gateway, http: aiohttp.ClientSession) -> None:
    kid = await start_kernel(http, gw)

    async def connections() -> int:
        return int((await (await http.get(f"{gw.url}api/kernels/{kid}")).json())["connections"])

    a = await WsKernel.connect(http, gw, kid)
    b = await WsKernel.connect(http, gw, kid)
    assert await connections() == 2
    await a.close()
    await b.close()
    await poll(lambda: gw.ws_stats.open == 0)
    assert await connections() == 0


async def test_unknown_kernel_websocket_is_404(gw: Gateway, http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(f"{gw.url}api/kernels/00000000-0000-0000-0000-000000000000/channels")
    assert exc.value.status == 404


async def test_same_session_replaces_the_stale_socket(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    kid = await start_kernel(http, gw)
    a = await WsKernel.connect(http, gw, kid, session="sess-1")
    b = await WsKernel.connect(http, gw, kid, session="sess-1")
    code, _ = await closed_with(a)
    assert code == CLOSE_REPLACED
    out, _ = await b.execute("print('still here')")
    assert out == "still here\n"
    assert gw.ws_stats.replaced == 1
    await b.close()


@pytest.mark.parametrize("v1", [False, True])
async def test_output_while_disconnected_is_replayed(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path, v1: bool
) -> None:
    kid = await start_kernel(http, gw)
    flag = tmp_path / "go"
    a = await WsKernel.connect(http, gw, kid, session="sess-r", v1=v1)
    code = (
        f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.01)\n"
        "print('while you were away')"
    )
    mid = await a.send("execute_request", {"code": code})
    await a.until(lambda d: d["msg_type"] == "execute_input")
    await a.close()
    await poll(lambda: gw.ws_stats.open == 0)
    flag.write_text("")
    bridge = gw.bridges[kid]
    # The reply and the idle status are buffered for the session with no socket.
    await poll(lambda: len(bridge.sessions["sess-r"]._buffer) >= 3)
    b = await WsKernel.connect(http, gw, kid, session="sess-r", v1=v1)
    out, reply = await b.collect(mid)
    assert out == "while you were away\n"
    assert reply["content"]["status"] == "ok"
    assert bridge.stats.replayed >= 3
    # Another session sees nothing of it.
    c = await WsKernel.connect(http, gw, kid, session="other")
    out, _ = await c.execute("print(1)")
    assert out == "1\n"
    assert not any(d["parent_header"].get("msg_id") == mid for d in c.seen)
    await b.close()
    await c.close()


@pytest.mark.parametrize("gw", [{"replay_bytes": 4096}], indirect=True)
async def test_replay_buffer_is_bounded_by_bytes(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    kid = await start_kernel(http, gw)
    flag = tmp_path / "go"
    a = await WsKernel.connect(http, gw, kid, session="sess-b")
    code = (
        f"import os, time, sys\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.01)\n"
        "for i in range(200):\n    print('x' * 100, flush=True)\nprint('end')"
    )
    mid = await a.send("execute_request", {"code": code})
    await a.until(lambda d: d["msg_type"] == "execute_input")
    await a.close()
    await poll(lambda: gw.ws_stats.open == 0)
    flag.write_text("")
    bridge = gw.bridges[kid]
    await poll(lambda: bridge.stats.replay_dropped > 0)
    cs = bridge.sessions["sess-b"]

    def buffered_idle() -> bool:  # the cell's idle status is in the buffer: it is over
        return any(
            mid.encode() in parts[1] and b'"idle"' in parts[3] for _, _, parts, _ in cs._buffer
        )

    await poll(buffered_idle)
    b = await WsKernel.connect(http, gw, kid, session="sess-b")
    out, _ = await b.collect(mid)  # the newest messages survived: the reply and the idle
    assert out.endswith("end\n")
    assert len(out) < 4096 < 200 * 100  # what was printed did not all fit
    await b.close()


async def test_socket_survives_restarts_without_losing_first_output(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    kid = await start_kernel(http, gw)
    kc = await WsKernel.connect(http, gw, kid, v1=True)
    for i in range(3):
        r = await http.post(f"{gw.url}api/kernels/{kid}/restart")
        assert r.status == 200
        # Sent at once after the restart: the first cell's output must arrive.
        out, reply = await kc.execute(f"print('round {i}')")
        assert out == f"round {i}\n", kc.seen[-10:]
        assert reply["content"]["execution_count"] == 1
    await kc.close()


async def test_automatic_restart_is_announced_and_socket_keeps_working(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    kid = await start_kernel(http, gw)
    kc = await WsKernel.connect(http, gw, kid)
    pid = gw.mkm.get_kernel(kid).process.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGKILL)
    status = await kc.until(
        lambda d: d["msg_type"] == "status" and d["content"]["execution_state"] == "restarting"
    )
    # Why, as the supervisor saw it: SIGKILL is signal 9; the first of its restarts.
    assert status["content"]["reason"].startswith("died (signal 9): restart 1 of ")
    out, _ = await kc.execute("print('back')")
    assert out == "back\n"
    assert gw.mkm.get_kernel(kid).process.pid != pid  # type: ignore[union-attr]
    await kc.close()


async def test_delete_closes_sockets_after_the_final_status(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    kid = await start_kernel(http, gw)
    kcs = [await WsKernel.connect(http, gw, kid, v1=v1) for v1 in (False, True)]
    assert (await http.delete(f"{gw.url}api/kernels/{kid}")).status == 204
    for kc in kcs:
        code, got = await closed_with(kc)
        assert code == CLOSE_KERNEL_GONE
        assert got and got[-1]["msg_type"] == "status"
        assert got[-1]["content"]["execution_state"] == "dead"
    assert gw.bridges == {}


async def test_bad_frames_are_answered_and_harm_nothing(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    kid = await start_kernel(http, gw)
    for v1 in (False, True):
        kc = await WsKernel.connect(http, gw, kid, v1=v1)
        await kc.ws.send_str("this is not json")
        note = await kc.until(lambda d: d["msg_type"] == "stream")
        assert "bad message" in note["content"]["text"]
        await kc.ws.send_bytes(b"\x05\x00\x00")
        note = await kc.until(lambda d: d["msg_type"] == "stream")
        assert "bad message" in note["content"]["text"]
        await kc.send("execute_request", {"code": "1"}, channel="iopub")
        note = await kc.until(lambda d: d["msg_type"] == "stream")
        assert "iopub" in note["content"]["text"]
        out, _ = await kc.execute("print('fine')")
        assert out == "fine\n"
        await kc.close()
    assert gw.ws_stats.bad_frames == 6


@pytest.mark.parametrize("gw", [{"max_message_size": 1 << 20}], indirect=True)
async def test_oversized_frame_closes_that_socket_only(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    kid = await start_kernel(http, gw)
    other = await WsKernel.connect(http, gw, kid)
    kc = await WsKernel.connect(http, gw, kid)
    await kc.ws.send_str("x" * (2 << 20))
    code, _ = await closed_with(kc)
    assert code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    out, _ = await other.execute("print('alive')")
    assert out == "alive\n"
    again = await WsKernel.connect(http, gw, kid)
    out, _ = await again.execute("print('again')")
    assert out == "again\n"
    await other.close()
    await again.close()


async def test_large_message_under_the_default_limit_passes(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    kid = await start_kernel(http, gw)
    kc = await WsKernel.connect(http, gw, kid, v1=True, max_msg_size=128 << 20)
    # Over aiohttp's default 4 MiB: the gateway accepts at least 64 MiB.
    out, reply = await kc.execute("x = '" + "y" * (6 << 20) + "'\nprint(len(x))", timeout=120)
    assert out == f"{6 << 20}\n", reply
    await kc.close()


# A client in a process of its own that opens the channels socket and never reads.
SLOW_CLIENT = """
import asyncio, sys, aiohttp
async def main(url):
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url) as ws:
            print("connected", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize(
    "gw", [{"send_queue_messages": 5000, "send_queue_bytes": 8 << 20}], indirect=True
)
async def test_slow_client_stalls_nobody(gw: Gateway, http: aiohttp.ClientSession) -> None:
    kid = await start_kernel(http, gw)
    url = f"{gw.url}api/kernels/{kid}/channels?session_id=slow&token={TOKEN}"
    slow = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SLOW_CLIENT,
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert slow.stdout is not None and slow.stdin is not None
        assert await asyncio.wait_for(slow.stdout.readline(), 60) == b"connected\n"
        fast = await WsKernel.connect(http, gw, kid)
        # 40 MB of output: more than the slow client's socket buffers and its queue hold.
        code = (
            "for i in range(2000):\n    print(str(i) + ' ' + 'z' * 20000, flush=True)\n"
            "print('done')"
        )
        out, reply = await fast.execute(code, timeout=240)
        # The reader got its reply, its idle status and the end of the output (a
        # reader slower than the kernel on a loaded machine may lose middle lines).
        assert reply["content"]["status"] == "ok"
        assert out.endswith("done\n")
        sessions = gw.bridges[kid].sessions
        assert sessions["slow"].sink.dropped > 0  # type: ignore[union-attr]
        r = await http.get(gw.url + "metrics")
        assert "kernelkeeper_gateway_websocket_dropped_messages_total 0\n" not in await r.text()
        out, _ = await fast.execute("print('next')")
        assert out == "next\n"
        await fast.close()
    finally:
        if slow.stdin is not None:
            slow.stdin.close()
        try:
            await asyncio.wait_for(slow.wait(), 30)
        except asyncio.TimeoutError:
            slow.kill()
            await slow.wait()


@pytest.mark.parametrize(
    "gw",
    [{"cull_idle_timeout": 1.0, "cull_interval": 0.5, "cull_connected": True}],
    indirect=True,
)
async def test_culled_kernel_closes_its_sockets(gw: Gateway, http: aiohttp.ClientSession) -> None:
    kid = await start_kernel(http, gw)
    kc = await WsKernel.connect(http, gw, kid)
    code, got = await closed_with(kc, timeout=60)
    assert code == CLOSE_KERNEL_GONE
    assert got[-1]["content"]["execution_state"] == "dead"
    model = await (await http.get(f"{gw.url}api/kernels/{kid}")).json()
    assert model["execution_state"] == "dead" and model["reason"]


@pytest.mark.parametrize("gw", [{"ping_interval": 0.5}], indirect=True)
async def test_server_pings(gw: Gateway, http: aiohttp.ClientSession) -> None:
    kid = await start_kernel(http, gw)
    url = f"{gw.url}api/kernels/{kid}/channels"
    async with http.ws_connect(url, autoping=False) as ws:
        msg = await asyncio.wait_for(ws.receive(), 30)
        while msg.type is not aiohttp.WSMsgType.PING:
            msg = await asyncio.wait_for(ws.receive(), 30)
        await ws.pong(msg.data)


async def test_gateway_close_closes_sockets_and_ends_kernels(
    http: aiohttp.ClientSession,
) -> None:
    gw = Gateway(config())
    await gw.start()
    try:
        kid = await start_kernel(http, gw)
        kc = await WsKernel.connect(http, gw, kid)
        proc = gw.mkm.get_kernel(kid).process
        assert proc is not None
        closing = asyncio.ensure_future(closed_with(kc))
    finally:
        await gw.aclose()
    code, _ = await closing
    assert code == 1001
    assert not await proc.is_alive()


async def test_messages_are_held_until_the_bridge_is_live_again(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    # What makes the first cell after a restart safe: while the bridge is not
    # live (a restart or death under way), clients' messages wait in the gateway.
    kid = await start_kernel(http, gw)
    kc = await WsKernel.connect(http, gw, kid)
    bridge = gw.bridges[kid]
    bridge.reset()
    assert not bridge.live
    mid = await kc.send("execute_request", {"code": "print('held')"})
    await poll(lambda: len(bridge._held) == 1)
    bridge.revalidate()
    out, _ = await kc.collect(mid)
    assert out == "held\n"
    assert bridge.live and bridge._held == []
    await kc.close()

"""The client surface exactly as nbclient (and papermill through it) drives it.

nbclient itself is not run here: each test replays its calls against a real
ipykernel: ``km.client()``, ``start_channels()``, ``wait_for_ready(timeout=)``,
``kernel_info()`` returning a msg_id whose reply is fished out of
``shell_channel.get_msg(timeout=)``, ``execute(...)`` and iopub polling with
``iopub_channel.get_msg(timeout=)``, ``queue.Empty`` on timeouts, ``is_alive()``,
``session.msg`` + ``shell_channel.send`` and ``stop_channels()``; for both the
async and the blocking client.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import time
from typing import Any

import pytest

from kernelkeeper import AsyncKernelManager, BlockingKernelClient, KernelManager

pytestmark = pytest.mark.timeout(60)

READY = 30.0
TIMEOUT = 15.0
Msg = dict[str, Any]


async def ensure_async(obj: Any) -> Any:
    """nbclient's helper: await the value if it is awaitable."""
    if inspect.isawaitable(obj):
        return await obj
    return obj


def summary(msg: Msg) -> tuple[str, str | None]:
    c = msg["content"]
    if msg["msg_type"] == "status":
        return ("status", c["execution_state"])
    if msg["msg_type"] == "stream":
        return ("stream", c["name"])
    return (msg["msg_type"], None)


EXPECTED_SEQUENCE = [
    ("status", "busy"),
    ("execute_input", None),
    ("stream", "stdout"),
    ("status", "idle"),
]


# -- async client ---------------------------------------------------------------------


async def async_wait_for_reply(kc: Any, msg_id: str, timeout: float = TIMEOUT) -> Msg:
    """nbclient.async_wait_for_reply: poll shell with a short timeout, check liveness."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = await ensure_async(kc.shell_channel.get_msg(timeout=1))
        except queue.Empty:
            assert await ensure_async(kc.is_alive())
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg
    raise AssertionError(f"no reply to {msg_id}")


async def async_poll_iopub(kc: Any, msg_id: str) -> list[Msg]:
    """nbclient._async_poll_output_msg: get_msg(timeout=None) until idle for our parent."""
    out: list[Msg] = []
    while True:
        msg = await ensure_async(kc.iopub_channel.get_msg(timeout=None))
        if msg["parent_header"].get("msg_id") == msg_id:
            out.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return out


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_async_client_nbclient_flow(transport: str) -> None:
    km = AsyncKernelManager(transport=transport)
    await ensure_async(km.start_kernel(extra_arguments=[]))
    assert km.has_kernel and km.ipykernel
    kc = km.client()
    try:
        assert not kc.channels_running
        await ensure_async(kc.start_channels())
        assert kc.channels_running
        info = await ensure_async(kc.wait_for_ready(timeout=READY))
        assert info["msg_type"] == "kernel_info_reply"
        kc.allow_stdin = False

        # kernel_info: msg_id now, reply from the shell queue.
        msg_id = await ensure_async(kc.kernel_info())
        assert isinstance(msg_id, str) and msg_id
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = await kc.shell_channel.get_msg(timeout=max(0.0, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        assert reply["msg_type"] == "kernel_info_reply"
        assert reply["content"]["language_info"]["name"] == "python"

        # execute the way nbclient calls it.
        msg_id = await ensure_async(
            kc.execute(
                "print('hello nb')", store_history=True, stop_on_error=False, allow_stdin=False
            )
        )
        assert isinstance(msg_id, str)
        seen: list[Msg] = []
        deadline = time.monotonic() + TIMEOUT
        while not seen or summary(seen[-1]) != ("status", "idle"):
            msg = await kc.iopub_channel.get_msg(timeout=max(0.0, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id:
                seen.append(msg)
        assert [summary(m) for m in seen] == EXPECTED_SEQUENCE
        assert seen[1]["content"]["code"] == "print('hello nb')"
        assert seen[2]["content"]["text"] == "hello nb\n"
        exec_reply = await async_wait_for_reply(kc, msg_id)
        assert exec_reply["content"]["status"] == "ok"
        assert exec_reply["content"]["execution_count"] == seen[1]["content"]["execution_count"]

        # Nothing left for this request: get_msg times out with queue.Empty.
        with pytest.raises(queue.Empty):
            await kc.shell_channel.get_msg(timeout=0.1)
        with pytest.raises(queue.Empty):
            await kc.stdin_channel.get_msg(timeout=0.05)
        assert await kc.shell_channel.msg_ready() is False

        # A raw request built with the session and sent on the shell channel.
        raw = kc.session.msg(
            "execute_request",
            {
                "code": "raw_var = 5\nraw_var * 2",
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        kc.shell_channel.send(raw)
        raw_reply = await async_wait_for_reply(kc, raw["header"]["msg_id"])
        assert raw_reply["msg_type"] == "execute_reply"
        assert raw_reply["content"]["status"] == "ok"
        raw_io = await async_poll_iopub(kc, raw["header"]["msg_id"])
        results = [m for m in raw_io if m["msg_type"] == "execute_result"]
        assert [r["content"]["data"]["text/plain"] for r in results] == ["10"]

        assert await ensure_async(kc.is_alive()) is True
        await ensure_async(kc.stop_channels())
        assert not kc.channels_running
    finally:
        await kc.aclose()
        await ensure_async(km.shutdown_kernel(now=True))
    assert not await ensure_async(km.is_alive())
    await ensure_async(km.cleanup_resources())


async def test_async_client_concurrent_pollers_like_nbclient() -> None:
    """nbclient runs an iopub poller and a shell poller as separate tasks per cell,
    cancels them on timeouts, runs cells with errors allowed, and checks is_alive."""
    km = AsyncKernelManager()
    await km.start_kernel()
    kc = km.client()
    try:
        kc.start_channels()
        await kc.wait_for_ready(timeout=READY)
        kc.allow_stdin = False
        cells = [
            ("a = 1\nprint(a)", "ok", "1\n"),
            ("raise KeyError('nope')", "error", ""),
            ("print(a + 1)", "ok", "2\n"),  # stop_on_error=False: the kernel goes on
            ("input('never')", "error", ""),  # allow_stdin False
        ]
        for code, status, out in cells:
            msg_id = await kc.execute(code, store_history=True, stop_on_error=False)
            poll_out = asyncio.ensure_future(async_poll_iopub(kc, msg_id))
            reply = await async_wait_for_reply(kc, msg_id)
            msgs = await asyncio.wait_for(poll_out, TIMEOUT)
            assert reply["content"]["status"] == status, (code, reply["content"])
            text = "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")
            assert text == out
            if status == "error":
                errors = [m for m in msgs if m["msg_type"] == "error"]
                assert len(errors) == 1
                assert errors[0]["content"]["ename"] == reply["content"]["ename"]
        assert reply["content"]["ename"] == "StdinNotImplementedError"

        # A get_msg cancelled by wait_for (nbclient's iopub_timeout) loses nothing.
        waiter = asyncio.ensure_future(kc.iopub_channel.get_msg(timeout=None))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), 0.05)
        waiter.cancel()
        msg_id = await kc.execute("print('after cancel')")
        msgs = await asyncio.wait_for(async_poll_iopub(kc, msg_id), TIMEOUT)
        assert [summary(m) for m in msgs] == EXPECTED_SEQUENCE

        # A dead kernel is noticed through is_alive (nbclient's DeadKernelError).
        assert km.process is not None
        await km.process.kill()
        assert await kc.is_alive() is False
        kc.stop_channels()
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=True)


# -- blocking client ---------------------------------------------------------------------


def wait_for_reply(kc: BlockingKernelClient, msg_id: str, timeout: float = TIMEOUT) -> Msg:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.shell_channel.get_msg(timeout=1)
        except queue.Empty:
            assert kc.is_alive()
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg
    raise AssertionError(f"no reply to {msg_id}")


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_blocking_client_nbclient_flow(transport: str) -> None:
    km = KernelManager(transport=transport)
    km.start_kernel(extra_arguments=[])
    kc = km.client()
    try:
        assert not kc.channels_running
        kc.start_channels()
        assert kc.channels_running
        kc.wait_for_ready(timeout=READY)
        kc.allow_stdin = False
        assert kc.allow_stdin is False

        msg_id = kc.kernel_info()
        reply = wait_for_reply(kc, msg_id)
        assert reply["content"]["language_info"]["name"] == "python"

        msg_id = kc.execute(
            "print('hello blocking')", store_history=True, stop_on_error=False, allow_stdin=False
        )
        seen: list[Msg] = []
        deadline = time.monotonic() + TIMEOUT
        while not seen or summary(seen[-1]) != ("status", "idle"):
            msg = kc.iopub_channel.get_msg(timeout=max(0.0, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id:
                seen.append(msg)
        assert [summary(m) for m in seen] == EXPECTED_SEQUENCE
        assert seen[2]["content"]["text"] == "hello blocking\n"
        assert wait_for_reply(kc, msg_id)["content"]["status"] == "ok"

        with pytest.raises(queue.Empty):
            kc.shell_channel.get_msg(timeout=0.1)
        with pytest.raises(queue.Empty):
            kc.iopub_channel.get_msg(block=False)
        assert kc.shell_channel.msg_ready() is False

        raw = kc.session.msg("kernel_info_request")
        kc.shell_channel.send(raw)
        raw_reply = wait_for_reply(kc, raw["header"]["msg_id"])
        assert raw_reply["msg_type"] == "kernel_info_reply"
        assert raw_reply["parent_header"]["msg_id"] == raw["msg_id"]

        assert kc.is_alive() is True
        km.shutdown_kernel(now=True)
        assert kc.is_alive() is False  # what nbclient's liveness poll sees
        kc.stop_channels()
        assert not kc.channels_running
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert not km.is_alive()

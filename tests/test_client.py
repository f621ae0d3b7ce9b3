"""The kernel client against real ipykernel kernels, over tcp and ipc.

Blocking-client tests share one kernel per transport (module scope: its
fixture sets its own runtime dir and asserts on teardown that the process and
every file are gone). Async-client tests and tests that kill, interrupt or
restart start their own kernels.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

import kernelkeeper
from helpers import sleep_cell
from kernelkeeper import (
    AsyncKernelClient,
    AsyncKernelManager,
    BlockingKernelClient,
    KernelManager,
    KernelTimeoutError,
    async_start_new_kernel,
    start_new_kernel,
)

pytestmark = pytest.mark.timeout(90)

TRANSPORTS = ["tcp", "ipc"]
READY = 30.0  # generous startup deadline; a start normally takes ~0.5 s
REPLY = 15.0  # deadline for any single reply
# An interrupted `time.sleep(60)` must end with KeyboardInterrupt well before the
# sleep would: typically in ~0.1 s, but the first traceback a kernel formats is
# slow on a loaded machine, so the deadline is generous (still half the sleep).
INTERRUPTED = 30.0
IPYKERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]

Msg = dict[str, Any]


# -- helpers ------------------------------------------------------------------------


def shell_reply(kc: BlockingKernelClient, msg_id: str, timeout: float = REPLY) -> Msg:
    """Read the shell queue until the reply to ``msg_id`` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def iopub_until_idle(kc: BlockingKernelClient, msg_id: str, timeout: float = REPLY) -> list[Msg]:
    """iopub messages of request ``msg_id``, up to and including its idle status."""
    deadline = time.monotonic() + timeout
    out: list[Msg] = []
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        out.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out


async def a_shell_reply(kc: AsyncKernelClient, msg_id: str, timeout: float = REPLY) -> Msg:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg = await kc.get_shell_msg(timeout=max(0.0, deadline - loop.time()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


async def a_iopub_until(
    kc: AsyncKernelClient, msg_id: str, pred: Callable[[Msg], bool], timeout: float = REPLY
) -> list[Msg]:
    """iopub messages of ``msg_id`` up to and including the first one matching ``pred``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    out: list[Msg] = []
    while True:
        msg = await kc.get_iopub_msg(timeout=max(0.0, deadline - loop.time()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        out.append(msg)
        if pred(msg):
            return out


def is_idle(msg: Msg) -> bool:
    return msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"


def stream_text(msgs: list[Msg], name: str = "stdout") -> str:
    return "".join(
        m["content"]["text"]
        for m in msgs
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def assert_gone(pid: int, files: list[str], runtime: Path | None = None) -> None:
    """The kernel process is reaped and its files are removed."""
    try:
        p = psutil.Process(pid)
        assert p.status() == psutil.STATUS_ZOMBIE, f"kernel {pid} still running"
    except psutil.NoSuchProcess:
        pass
    left = [f for f in files if os.path.exists(f)]
    assert not left, f"kernel files left behind: {left}"
    if runtime is not None:
        assert not [p.name for p in runtime.iterdir() if p.name.startswith("kernel-")]


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module", params=TRANSPORTS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """One blocking kernel per transport for the tests whose state does not matter.

    Set up before the per-test leak check snapshots the process tree, so it is
    not reported as a leak; its teardown asserts the cleanup itself.
    """
    runtime = tmp_path_factory.mktemp("rt-shared")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
        km, kc = start_new_kernel(transport=request.param, startup_timeout=READY)
        assert km.process is not None and km.connection_info is not None
        pid = km.process.pid
        files = [km.connection_file, *km.connection_info.ipc_paths()]
        assert all(os.path.exists(f) for f in files)
        try:
            yield km, kc
        finally:
            kc.stop_channels()
            km.shutdown_kernel()  # the graceful path: shutdown_request, then wait
        assert_gone(pid, files, runtime)


@pytest.fixture
def bkc(shared: tuple[KernelManager, BlockingKernelClient]) -> BlockingKernelClient:
    return shared[1]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def akernel(transport: str) -> AsyncIterator[tuple[AsyncKernelManager, AsyncKernelClient]]:
    km, kc = await async_start_new_kernel(startup_timeout=READY, transport=transport)
    try:
        yield km, kc
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=True)
    assert not kc.channels_running


@pytest.fixture
def message_kernel(kernel_dir: Callable[..., str]) -> str:
    """A kernelspec for plain ipykernel that asks to be interrupted by message."""
    return kernel_dir("ipykernel_msg", argv=IPYKERNEL_ARGV, interrupt_mode="message")


OUTPUT_CODE = """\
import sys
from IPython.display import display
print("to stdout", flush=True)
print("to stderr", file=sys.stderr, flush=True)
display({"text/plain": "displayed"}, raw=True)
6 * 7
"""


def check_outputs(outputs: list[dict[str, Any]]) -> None:
    kinds = [o["output_type"] for o in outputs]
    assert sorted(kinds) == ["display_data", "execute_result", "stream", "stream"], outputs
    streams = {o["name"]: o["text"] for o in outputs if o["output_type"] == "stream"}
    assert streams == {"stdout": "to stdout\n", "stderr": "to stderr\n"}
    display = next(o for o in outputs if o["output_type"] == "display_data")
    assert display["data"] == {"text/plain": "displayed"}
    assert kinds[-1] == "execute_result"
    assert outputs[-1]["data"]["text/plain"] == "42"
    assert isinstance(outputs[-1]["execution_count"], int)


# stop_on_error=False with it: after an error (the KeyboardInterrupt) ipykernel
# would otherwise abort the requests that follow right behind it.
# In 0.1 s steps: a SIGINT that lands just as one long time.sleep() is entered
# acts only when it ends, which made a delivered interrupt look lost about one
# run in fifty (see helpers.main_thread_sleeping).
SLEEP_CODE = sleep_cell(60)

NAME_CODE = 'name = input("name? ")\nprint("hello", name)'


# -- blocking client on the shared kernel -----------------------------------------------


def test_kernel_info(bkc: BlockingKernelClient) -> None:
    reply = bkc.kernel_info(reply=True, timeout=REPLY)
    c = reply["content"]
    assert reply["msg_type"] == "kernel_info_reply"
    assert c["status"] == "ok"
    assert c["protocol_version"].startswith("5.")
    assert c["language_info"]["name"] == "python"
    assert c["implementation"] == "ipython"
    # wait_for_ready kept the reply it got.
    assert bkc.kernel_info_reply is not None
    assert bkc.kernel_info_reply["content"]["language_info"]["name"] == "python"
    # The plain form returns the msg_id; the reply is then queued on shell.
    msg_id = bkc.kernel_info()
    assert isinstance(msg_id, str)
    assert shell_reply(bkc, msg_id)["msg_type"] == "kernel_info_reply"


def test_run_cell_outputs(bkc: BlockingKernelClient) -> None:
    seen: list[str] = []
    res = bkc.run_cell(OUTPUT_CODE, timeout=REPLY, on_output=lambda m: seen.append(m["msg_type"]))
    assert res.status == "ok"
    check_outputs(res.outputs)
    assert res.stdout == "to stdout\n" and res.stderr == "to stderr\n"
    assert res.result() == {"text/plain": "42"}
    assert res.error is None
    assert res.execution_count == res.outputs[-1]["execution_count"]
    assert seen[0] == "status" and "execute_input" in seen and "idle" not in seen


def test_run_cell_error(bkc: BlockingKernelClient) -> None:
    res = bkc.run_cell("print('before')\nraise ValueError('boom')", timeout=REPLY)
    assert res.status == "error"
    assert res.stdout == "before\n"
    assert res.error is not None
    assert res.error["ename"] == "ValueError" and res.error["evalue"] == "boom"
    assert res.error["traceback"]
    assert res.reply["content"]["ename"] == "ValueError"
    assert res.result() is None


def test_execute_interactive_output_hook(bkc: BlockingKernelClient) -> None:
    seen: list[Msg] = []
    reply = bkc.execute_interactive(
        "print('interactive'); 1 + 1", output_hook=seen.append, timeout=REPLY
    )
    assert reply["content"]["status"] == "ok"
    assert stream_text(seen) == "interactive\n"
    results = [m for m in seen if m["msg_type"] == "execute_result"]
    assert [r["content"]["data"]["text/plain"] for r in results] == ["2"]
    assert all(m["parent_header"]["msg_id"] == reply["parent_header"]["msg_id"] for m in seen)


def test_failing_output_hook_does_not_kill_channels(bkc: BlockingKernelClient) -> None:
    def bad_hook(msg: Msg) -> None:
        raise RuntimeError("user hook bug")

    res = bkc.run_cell("print('still collected')", on_output=bad_hook, timeout=REPLY)
    assert res.status == "ok"
    assert res.stdout == "still collected\n"
    assert bkc.iopub_channel.is_alive() and bkc.shell_channel.is_alive()
    assert bkc.run_cell("print('next')", timeout=REPLY).stdout == "next\n"


def test_execute_reply_and_user_expressions(bkc: BlockingKernelClient) -> None:
    reply = bkc.execute(
        "ue_value = 21", user_expressions={"x": "ue_value * 2"}, reply=True, timeout=REPLY
    )
    c = reply["content"]
    assert c["status"] == "ok"
    assert c["user_expressions"]["x"]["data"]["text/plain"] == "42"


def test_stdin_run_cell_hook(bkc: BlockingKernelClient) -> None:
    prompts: list[Msg] = []

    def hook(msg: Msg) -> None:
        prompts.append(msg)
        bkc.input("alice")  # the natural call, made on the library's loop thread

    res = bkc.run_cell(NAME_CODE, stdin_hook=hook, timeout=REPLY)
    assert res.status == "ok"
    assert res.stdout == "hello alice\n"
    assert [p["content"]["prompt"] for p in prompts] == ["name? "]
    assert prompts[0]["msg_type"] == "input_request"


def test_stdin_execute_interactive_async_hook(bkc: BlockingKernelClient) -> None:
    async def hook(msg: Msg) -> None:
        bkc.async_client.input(msg["content"]["prompt"].upper())

    seen: list[Msg] = []
    reply = bkc.execute_interactive(
        NAME_CODE, allow_stdin=True, stdin_hook=hook, output_hook=seen.append, timeout=REPLY
    )
    assert reply["content"]["status"] == "ok"
    assert stream_text(seen) == "hello NAME? \n"


def test_stdin_raw_jupyter_client_way(bkc: BlockingKernelClient) -> None:
    msg_id = bkc.execute(NAME_CODE, allow_stdin=True)
    req = bkc.get_stdin_msg(timeout=REPLY)
    assert req["msg_type"] == "input_request"
    assert req["parent_header"]["msg_id"] == msg_id
    assert req["content"] == {"prompt": "name? ", "password": False}
    bkc.input("bob")
    reply = shell_reply(bkc, msg_id)
    assert reply["content"]["status"] == "ok"
    assert stream_text(iopub_until_idle(bkc, msg_id)) == "hello bob\n"


def test_stdin_password(bkc: BlockingKernelClient) -> None:
    msg_id = bkc.execute("import getpass\nprint(len(getpass.getpass('pw: ')))", allow_stdin=True)
    req = bkc.get_stdin_msg(timeout=REPLY)
    assert req["content"] == {"prompt": "pw: ", "password": True}
    bkc.input("secret")
    assert shell_reply(bkc, msg_id)["content"]["status"] == "ok"
    assert stream_text(iopub_until_idle(bkc, msg_id)) == "6\n"


def test_stdin_not_allowed(bkc: BlockingKernelClient) -> None:
    res = bkc.run_cell("input('x')", timeout=REPLY)  # no hook: allow_stdin=False
    assert res.status == "error"
    assert res.error is not None and res.error["ename"] == "StdinNotImplementedError"


def test_timeout_raises_kernel_timeout_error_and_kernel_recovers(bkc: BlockingKernelClient) -> None:
    pending: list[Msg] = []
    with pytest.raises(KernelTimeoutError):
        # The hook does not answer, so the execution cannot finish in time.
        bkc.execute_interactive(
            "late = input('wait: ')", allow_stdin=True, stdin_hook=pending.append, timeout=0.5
        )
    assert len(pending) == 1
    msg_id = pending[0]["parent_header"]["msg_id"]
    bkc.input("late answer")  # answer after the fact: the kernel finishes
    assert shell_reply(bkc, msg_id)["content"]["status"] == "ok"
    res = bkc.run_cell("late", timeout=REPLY)
    assert res.result() == {"text/plain": "'late answer'"}


def test_complete(bkc: BlockingKernelClient) -> None:
    c = bkc.complete("import o", reply=True, timeout=REPLY)["content"]
    assert c["status"] == "ok"
    assert "os" in c["matches"]
    assert c["cursor_end"] == len("import o")
    assert c["cursor_start"] == len("import ")


def test_inspect(bkc: BlockingKernelClient) -> None:
    c = bkc.inspect("print", reply=True, timeout=REPLY)["content"]
    assert c["status"] == "ok" and c["found"] is True
    assert "print" in c["data"]["text/plain"]
    missing = bkc.inspect("no_such_name_kk", reply=True, timeout=REPLY)["content"]
    assert missing["found"] is False


def test_is_complete(bkc: BlockingKernelClient) -> None:
    def status(code: str) -> dict[str, Any]:
        return dict(bkc.is_complete(code, reply=True, timeout=REPLY)["content"])

    assert status("x = 1")["status"] == "complete"
    loop = status("for i in range(3):")
    assert loop["status"] == "incomplete" and loop["indent"] == "    "
    assert status("1)")["status"] == "invalid"


def test_history(bkc: BlockingKernelClient) -> None:
    marker = f"hist_marker_{os.getpid()} = 1"
    assert bkc.run_cell(marker, store_history=True, timeout=REPLY).status == "ok"
    rng = bkc.history(reply=True, timeout=REPLY)["content"]
    assert rng["status"] == "ok"
    assert marker in [entry[2] for entry in rng["history"]]
    tail = bkc.history(hist_access_type="tail", n=1, reply=True, timeout=REPLY)["content"]
    assert [entry[2] for entry in tail["history"]] == [marker]


def test_comm_info(bkc: BlockingKernelClient) -> None:
    res = bkc.run_cell(
        "import comm\nkk_comm = comm.create_comm(target_name='kk-target')\nkk_comm.comm_id",
        timeout=REPLY,
    )
    assert res.status == "ok"
    comm_id = res.result()["text/plain"].strip("'")  # type: ignore[index]
    try:
        c = bkc.comm_info("kk-target", reply=True, timeout=REPLY)["content"]
        assert c["status"] == "ok"
        assert c["comms"] == {comm_id: {"target_name": "kk-target"}}
        other = bkc.comm_info("no-such-target", reply=True, timeout=REPLY)["content"]
        assert other["comms"] == {}
        everything = bkc.comm_info(reply=True, timeout=REPLY)["content"]
        assert comm_id in everything["comms"]
    finally:
        assert bkc.run_cell("kk_comm.close()", timeout=REPLY).status == "ok"
    assert comm_id not in bkc.comm_info(reply=True, timeout=REPLY)["content"]["comms"]


def test_heartbeat_and_is_alive(bkc: BlockingKernelClient) -> None:
    assert bkc.channels_running
    assert bkc.hb_channel.is_alive()
    assert bkc.hb_channel.is_beating()
    assert bkc.is_alive()
    assert bkc.shell_channel.is_alive() and bkc.iopub_channel.is_alive()


async def test_blocking_client_inside_running_loop(bkc: BlockingKernelClient) -> None:
    """A notebook-style caller: blocking calls from a thread whose loop is running."""
    loop = asyncio.get_running_loop()
    assert loop.is_running()
    res = bkc.run_cell("print('from a running loop')", timeout=REPLY)
    assert res.stdout == "from a running loop\n"
    reply = bkc.execute("1", reply=True, timeout=REPLY)
    assert reply["content"]["status"] == "ok"
    msg_id = bkc.kernel_info()
    assert shell_reply(bkc, msg_id)["content"]["language_info"]["name"] == "python"
    with pytest.raises(queue.Empty):
        bkc.get_stdin_msg(timeout=0.05)
    # The caller's loop still works afterwards.
    assert await asyncio.wait_for(asyncio.sleep(0, result="ok"), 1) == "ok"


def test_blocking_client_from_threads(bkc: BlockingKernelClient) -> None:
    n = 6
    barrier = threading.Barrier(n)

    def work(i: int) -> tuple[int, str, str, str]:
        barrier.wait(timeout=REPLY)
        res = bkc.run_cell(f"print('thread', {i})", timeout=REPLY)
        reply = bkc.execute(
            "pass", user_expressions={"v": f"{i} * 1000"}, reply=True, timeout=REPLY
        )
        bkc.execute(f"thread_{i} = {i}")  # fire and forget; its reply is queued on shell
        return (
            i,
            res.stdout,
            res.reply["parent_header"]["msg_id"],
            reply["content"]["user_expressions"]["v"]["data"]["text/plain"],
        )

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(work, range(n)))
    for i, stdout, parent, value in results:
        assert stdout == f"thread {i}\n"
        assert value == str(i * 1000)
        assert parent
    assert len({r[2] for r in results}) == n
    # Every thread's fire-and-forget execute ran.
    code = f"[globals().get(f'thread_{{i}}') for i in range({n})]"
    res = bkc.run_cell(code, timeout=REPLY)
    assert res.result() == {"text/plain": str(list(range(n)))}


# -- blocking client, own kernels ------------------------------------------------------


def test_interrupt_by_message_blocking(message_kernel: str, transport: str) -> None:
    km, kc = start_new_kernel(
        kernel_name=message_kernel, transport=transport, startup_timeout=READY
    )
    try:
        assert km.kernel_spec.interrupt_mode == "message"
        assert kc.async_client.interrupt_mode == "message"
        for how in ("client", "manager"):
            msg_id = kc.execute(SLEEP_CODE, stop_on_error=False)
            # Wait until the code runs (its first output), then interrupt.
            deadline = time.monotonic() + REPLY
            while True:
                m = kc.get_iopub_msg(timeout=max(0.0, deadline - time.monotonic()))
                if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "stream":
                    break
            t0 = time.monotonic()
            if how == "client":
                kc.interrupt()
            else:
                km.interrupt_kernel()
            reply = shell_reply(kc, msg_id, timeout=INTERRUPTED)
            assert time.monotonic() - t0 < INTERRUPTED
            assert reply["content"]["status"] == "error"
            assert reply["content"]["ename"] == "KeyboardInterrupt"
            iopub_until_idle(kc, msg_id)
        assert kc.run_cell("'still alive'", timeout=REPLY).result() == {
            "text/plain": "'still alive'"
        }
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_wait_for_ready_first_output_not_lost_blocking(transport: str) -> None:
    for i in range(5):
        km = KernelManager(transport=transport)
        km.start_kernel(startup_timeout=READY)
        kc = km.client()
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=READY)
            msg_id = kc.execute(f"print('first output {i}')")
            msgs = iopub_until_idle(kc, msg_id)
            assert stream_text(msgs) == f"first output {i}\n"
            assert msgs[0]["msg_type"] == "status"
            assert msgs[0]["content"]["execution_state"] == "busy"
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


def test_run_kernel_context_manager() -> None:
    with kernelkeeper.run_kernel(startup_timeout=READY) as kc:
        assert kc.run_cell("print('ctx')", timeout=REPLY).stdout == "ctx\n"
        assert kc.is_alive()
    assert not kc.channels_running


# -- async client -------------------------------------------------------------------------


async def test_async_kernel_info_and_outputs(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    km, kc = akernel
    info = await kc.kernel_info(reply=True, timeout=REPLY)
    assert info["content"]["protocol_version"].startswith("5.")
    assert info["content"]["language_info"]["name"] == "python"
    assert kc.connection_info.transport == km.transport

    res = await kc.run_cell(OUTPUT_CODE, timeout=REPLY)
    assert res.status == "ok"
    check_outputs(res.outputs)

    err = await kc.run_cell("1/0", timeout=REPLY)
    assert err.status == "error"
    assert err.error is not None and err.error["ename"] == "ZeroDivisionError"

    # The plain request form and a raw iopub read.
    msg_id = await kc.execute("print('raw')")
    assert (await a_shell_reply(kc, msg_id))["content"]["status"] == "ok"
    assert stream_text(await a_iopub_until(kc, msg_id, is_idle)) == "raw\n"
    assert await kc.is_alive()
    assert kc.hb_channel.is_beating()


async def test_async_stdin(akernel: tuple[AsyncKernelManager, AsyncKernelClient]) -> None:
    _, kc = akernel
    res = await kc.run_cell(NAME_CODE, stdin_hook=lambda m: kc.input("carol"), timeout=REPLY)
    assert res.status == "ok" and res.stdout == "hello carol\n"

    async def ahook(msg: Msg) -> None:
        await asyncio.sleep(0)
        kc.input("dave")

    res = await kc.run_cell(NAME_CODE, stdin_hook=ahook, timeout=REPLY)
    assert res.stdout == "hello dave\n"

    # The jupyter_client way: get_stdin_msg, then input().
    msg_id = await kc.execute(NAME_CODE, allow_stdin=True)
    req = await kc.get_stdin_msg(timeout=REPLY)
    assert req["msg_type"] == "input_request"
    assert req["parent_header"]["msg_id"] == msg_id
    assert req["content"]["prompt"] == "name? "
    kc.input("erin")
    assert (await a_shell_reply(kc, msg_id))["content"]["status"] == "ok"
    assert stream_text(await a_iopub_until(kc, msg_id, is_idle)) == "hello erin\n"


async def test_async_introspection(akernel: tuple[AsyncKernelManager, AsyncKernelClient]) -> None:
    _, kc = akernel
    comp = (await kc.complete("import o", reply=True, timeout=REPLY))["content"]
    assert "os" in comp["matches"]
    insp = (await kc.inspect("len", reply=True, timeout=REPLY))["content"]
    assert insp["found"] is True and "len" in insp["data"]["text/plain"]
    assert (await kc.is_complete("x = (", reply=True, timeout=REPLY))["content"]["status"] == (
        "incomplete"
    )
    assert (await kc.is_complete("x = 1", reply=True, timeout=REPLY))["content"]["status"] == (
        "complete"
    )
    await kc.run_cell("async_hist = 1", timeout=REPLY)
    hist = (await kc.history(reply=True, timeout=REPLY))["content"]["history"]
    assert "async_hist = 1" in [h[2] for h in hist]
    comms = (await kc.comm_info(reply=True, timeout=REPLY))["content"]
    assert comms["status"] == "ok" and comms["comms"] == {}
    # A reply that does not come in time raises KernelTimeoutError.
    with pytest.raises(KernelTimeoutError):
        await kc.execute("import time; time.sleep(0.5)", reply=True, timeout=0.05)


async def test_async_heartbeat_notices_death(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    km, kc = akernel
    dead = asyncio.Event()
    since: list[float] = []
    kc.hb_channel.on_dead.append(lambda t: (since.append(t), dead.set()))
    ok = await kc.run_cell("print('alive')", timeout=REPLY)
    assert ok.stdout == "alive\n"
    assert not dead.is_set() and kc.hb_channel.is_beating()
    assert km.process is not None
    await km.process.kill()  # kill the process only; the manager still owns it
    await asyncio.wait_for(dead.wait(), 10)
    assert not kc.hb_channel.is_beating()
    assert since and since[0] > 0
    assert not await kc.is_alive()


async def test_async_interrupt_by_message(message_kernel: str, transport: str) -> None:
    km = AsyncKernelManager(message_kernel, transport=transport)
    await km.start_kernel(startup_timeout=READY)
    kc = km.client()
    try:
        kc.start_channels()
        await kc.wait_for_ready(timeout=READY)
        assert kc.interrupt_mode == "message"
        msg_id = await kc.execute(SLEEP_CODE, stop_on_error=False)
        await a_iopub_until(kc, msg_id, lambda m: m["msg_type"] == "stream")
        t0 = time.monotonic()
        ireply = await kc.interrupt(reply=True, timeout=REPLY)
        assert ireply["msg_type"] == "interrupt_reply"
        assert ireply["content"]["status"] == "ok"
        reply = await a_shell_reply(kc, msg_id, timeout=INTERRUPTED)
        assert time.monotonic() - t0 < INTERRUPTED
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert (await kc.run_cell("1 + 1", timeout=REPLY)).result() == {"text/plain": "2"}
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=True)


async def test_async_interrupt_by_signal(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    km, kc = akernel
    assert kc.interrupt_mode == "signal"
    msg_id = await kc.execute(SLEEP_CODE, stop_on_error=False)
    await a_iopub_until(kc, msg_id, lambda m: m["msg_type"] == "stream")
    t0 = time.monotonic()
    assert await kc.interrupt() is None  # SIGINT through the manager
    reply = await a_shell_reply(kc, msg_id, timeout=INTERRUPTED)
    assert time.monotonic() - t0 < INTERRUPTED
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert await km.is_alive()


async def test_async_wait_for_ready_first_output_not_lost(transport: str) -> None:
    """Five fresh kernels started together: each one's very first output arrives."""

    async def one(i: int) -> str:
        km, kc = await async_start_new_kernel(startup_timeout=READY, transport=transport)
        try:
            msg_id = await kc.execute(f"print('first {i}')")
            return stream_text(await a_iopub_until(kc, msg_id, is_idle))
        finally:
            await kc.aclose()
            await km.shutdown_kernel(now=True)

    outs = await asyncio.gather(*(one(i) for i in range(5)))
    assert outs == [f"first {i}\n" for i in range(5)]


async def test_async_start_new_kernel_and_context() -> None:
    async with kernelkeeper.async_run_kernel(startup_timeout=READY) as kc:
        res = await kc.run_cell("print('async ctx')", timeout=REPLY)
        assert res.stdout == "async ctx\n"
    assert not kc.channels_running

"""The client as a drop-in for jupyter_client's: attach by file, its idioms, its signatures.

Code written for jupyter_client (``jupyter console --existing``, IDE plug-ins,
scripts) builds a client from a connection file, loads it, and may send a
request before (or without) starting the channels. These tests do what such
code does, against real ipykernels: one started by kernelkeeper, one by
jupyter_client's own KernelManager, one by ``kernelkeeper start``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jupyter_client
import pytest
import zmq

import kernelkeeper as kk
from cli_helpers import cli, kill_recorded
from helpers import wait_for
from kernelkeeper.boundary import translate
from kernelkeeper.loopthread import LoopThread

pytestmark = pytest.mark.timeout(180)

READY = 60.0  # generous: a start takes ~0.5 s, far more on a loaded 2-core machine
REPLY = 30.0

Msg = dict[str, Any]


@pytest.fixture
def kernel() -> Iterator[kk.KernelManager]:
    km = kk.KernelManager()
    km.start_kernel(startup_timeout=READY)
    try:
        km.wait_ready(READY)
        yield km
    finally:
        km.shutdown_kernel(now=True)


def shell_reply(get: Any, msg_id: str, timeout: float = REPLY) -> Msg:
    deadline = time.monotonic() + timeout
    while True:
        msg: Msg = get(timeout=max(0.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def iopub_of(kc: Any, msg_id: str, timeout: float = REPLY) -> list[Msg]:
    """The iopub messages of ``msg_id`` up to its idle status (others skipped)."""
    deadline = time.monotonic() + timeout
    out: list[Msg] = []
    while True:
        msg: Msg = kc.get_iopub_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        out.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out


# -- attach by file -------------------------------------------------------------------------


def test_blocking_client_from_a_connection_file_without_starting_channels(
    kernel: kk.KernelManager,
) -> None:
    kc = kk.BlockingKernelClient(connection_file=kernel.connection_file)
    assert kc.connection_file == kernel.connection_file
    kc.load_connection_file()
    try:
        info = kernel.connection_info
        assert (kc.ip, kc.transport) == (info.ip, info.transport)
        assert [kc.shell_port, kc.iopub_port, kc.stdin_port, kc.control_port, kc.hb_port] == [
            info.shell_port,
            info.iopub_port,
            info.stdin_port,
            info.control_port,
            info.hb_port,
        ]
        assert kc.kernel_name == info.kernel_name
        got = kc.get_connection_info()
        assert got["key"] == info.key and got["shell_port"] == info.shell_port
        assert kc.get_connection_info(session=True)["session"] is kc.session
        assert not kc.channels_running
        # No start_channels(): the shell socket is created on first use.
        msg_id = kc.kernel_info()
        reply = shell_reply(kc.get_shell_msg, msg_id)
        assert reply["msg_type"] == "kernel_info_reply"
        assert kc.shell_channel.is_alive()
    finally:
        kc.stop_channels()


async def test_async_client_from_a_connection_file(kernel: kk.KernelManager) -> None:
    kc = kk.AsyncKernelClient(connection_file=kernel.connection_file)
    kc.load_connection_file()
    try:
        assert kc.shell_port == kernel.connection_info.shell_port
        msg_id = await kc.kernel_info()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPLY
        while True:
            msg = await kc.get_shell_msg(timeout=max(0.0, deadline - loop.time()))
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        assert msg["content"]["status"] == "ok"
        kc.start_channels()
        await kc.wait_for_ready(READY)
        assert (await kc.run_cell("print(6 * 7)", timeout=REPLY)).stdout == "42\n"
    finally:
        await kc.aclose()


def test_load_connection_info_from_a_dict_with_a_str_key(kernel: kk.KernelManager) -> None:
    with open(kernel.connection_file) as f:
        raw = json.load(f)
    assert isinstance(raw["key"], str)
    kc = kk.BlockingKernelClient()
    with pytest.raises(kk.NotRunningError, match="no connection info"):
        kc.kernel_info()
    kc.load_connection_info(raw)
    try:
        kc.start_channels()
        kc.wait_for_ready(READY)
        assert kc.execute("1 + 1", reply=True, timeout=REPLY)["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
    with pytest.raises(kk.ConnectionFileError):
        kc.load_connection_info({"transport": "tcp"})


def test_write_and_clean_up_a_connection_file(kernel: kk.KernelManager, tmp_path: Path) -> None:
    kc = kk.BlockingKernelClient(kernel.connection_info)
    path = tmp_path / "copy.json"
    assert kc.write_connection_file(path) == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    copy = kk.BlockingKernelClient(connection_file=path)
    copy.load_connection_file()
    assert copy.get_connection_info() == kc.get_connection_info()
    kc.cleanup_connection_file()
    assert not path.exists()


# -- jupyter_client's signatures and queues -------------------------------------------------


def test_get_msg_takes_timeout_first_and_returns_what_is_queued(
    kernel: kk.KernelManager,
) -> None:
    kc = kernel.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(READY)
        # Positional timeout: each call returns within it, with a message or with
        # queue.Empty. (Statuses of other clients' requests to this shared kernel
        # may still be broadcast for a moment: the queue goes empty after those.)
        for _ in range(50):
            t0 = time.monotonic()
            try:
                kc.get_iopub_msg(0.5)
            except queue.Empty:
                break
            finally:
                assert time.monotonic() - t0 < REPLY
        else:
            raise AssertionError("iopub never went quiet")
        msg_id = kc.kernel_info()
        wait_for(kc.shell_channel.msg_ready, REPLY)
        reply = kc.get_shell_msg(timeout=0)  # queued: returned, not queue.Empty
        assert reply["parent_header"]["msg_id"] == msg_id
        with pytest.raises(queue.Empty):
            kc.get_shell_msg(timeout=0)
    finally:
        kc.stop_channels()


def test_iopub_of_an_awaited_request_reaches_the_queue_but_probes_do_not(
    kernel: kk.KernelManager,
) -> None:
    kc = kernel.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(READY)  # its own kernel_info probes: kept out of the queue
        reply = kc.execute("print('copied')", reply=True, timeout=REPLY)
        msgs = iopub_of(kc, reply["parent_header"]["msg_id"])
        kinds = [m["msg_type"] for m in msgs]
        assert kinds[0] == "status" and "execute_input" in kinds and "stream" in kinds, kinds
        info = kc.kernel_info(reply=True, timeout=REPLY)
        statuses = iopub_of(kc, info["parent_header"]["msg_id"])
        assert [m["content"]["execution_state"] for m in statuses] == ["busy", "idle"]
    finally:
        kc.stop_channels()
    # Fresh client: nothing in its queue came from the ready handshake.
    kc = kernel.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(READY)
        marker = kc.execute("pass", reply=True, timeout=REPLY)["parent_header"]["msg_id"]
        before: list[Msg] = []
        while True:
            msg = kc.get_iopub_msg(timeout=REPLY)
            if msg["parent_header"].get("msg_id") == marker:
                break
            before.append(msg)
        assert before == [], [m["msg_type"] for m in before]
    finally:
        kc.stop_channels()


def test_raw_sockets_of_the_client(kernel: kk.KernelManager) -> None:
    kc = kk.BlockingKernelClient(connection_file=kernel.connection_file)
    kc.load_connection_file()
    sub = kc.connect_iopub()
    shell = kc.connect_shell()
    try:
        assert sub.type == zmq.SUB and shell.type == zmq.DEALER
        seen: list[str] = []
        deadline = time.monotonic() + REPLY
        while not seen and time.monotonic() < deadline:
            # Each request makes status messages; a SUB socket joins late.
            shell.send_multipart(kc.session.serialize(kc.session.msg("kernel_info_request")))
            if sub.poll(200):
                msg = kc.session.feed(sub.recv_multipart())
                if msg is not None:
                    seen.append(msg["msg_type"])
        assert seen and seen[0] in ("status", "iopub_welcome")
    finally:
        sub.close(linger=0)
        shell.close(linger=0)


# -- the portal and the error boundary ----------------------------------------------------


def test_a_kernel_on_a_portal_of_our_own(isolated_runtime: Path) -> None:
    portal = LoopThread(name="test-own-portal")
    try:
        km, kc = kk.start_new_kernel(startup_timeout=READY, portal=portal)
        try:
            assert km._portal is portal and kc._portal is portal
            assert kc.run_cell("2 * 21", timeout=REPLY).result() == {"text/plain": "42"}
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    finally:
        portal.close()


def test_foreign_errors_are_mapped_at_the_boundary() -> None:
    cases: list[tuple[BaseException, type[BaseException], type[BaseException]]] = [
        (ValueError("bad"), kk.MessageError, ValueError),
        (KeyError("content"), kk.MessageError, ValueError),
        (OSError(28, "No space left"), kk.RuntimeDirError, OSError),
        (zmq.ZMQError(zmq.ENOTSOCK), kk.NotRunningError, RuntimeError),
        (asyncio.CancelledError(), kk.NotRunningError, RuntimeError),
        # What a blocking call sees when the loop cancelled its work.
        (concurrent.futures.CancelledError(), kk.NotRunningError, RuntimeError),
    ]
    for raw, ours, builtin in cases:
        new = translate(raw)
        assert isinstance(new, ours) and isinstance(new, builtin), (raw, new)
        assert new.__cause__ is raw
    for passed in (kk.KernelTimeoutError("t"), queue.Empty(), TypeError("args")):
        assert translate(passed) is passed
    cancelled = asyncio.CancelledError()
    assert translate(cancelled, cancelled_by_caller=True) is cancelled


def test_a_pending_blocking_wait_gets_our_error_when_the_channels_close(
    kernel: kk.KernelManager,
) -> None:
    import threading

    kc = kernel.client()
    kc.start_channels()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            kc.get_stdin_msg()  # nothing will come
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    # The wait is under way once its getter is registered on the loop.
    wait_for(lambda: kc.stdin_channel.queue._getters, REPLY)
    kc.stop_channels()
    t.join(REPLY)
    assert len(errors) == 1 and isinstance(errors[0], kk.NotRunningError), errors


# -- kernels we did not start -------------------------------------------------------------


def test_attach_to_a_kernel_started_by_jupyter_client(tmp_path: Path) -> None:
    km = jupyter_client.KernelManager()
    km.start_kernel()
    try:
        kc = kk.BlockingKernelClient(connection_file=km.connection_file)
        kc.load_connection_file()
        kc.start_channels()
        try:
            kc.wait_for_ready(READY)
            assert kc.run_cell("x = 6 * 7; print(x)", timeout=REPLY).stdout == "42\n"
            # Interrupted by message: no manager here, so interrupt_request on control.
            # Short sleeps: in a kernel jupyter_client started, SIGINT may reach
            # another thread, and a long sleep would only end when it is over.
            msg_id = kc.execute(
                "import time\nprint('sleeping', flush=True)\nwhile True: time.sleep(0.01)"
            )
            # Its own output (the kernel may print warnings of its start, unparented).
            seen: list[Msg] = []
            wait_for(
                lambda: (
                    seen.extend(kc.iopub_channel.get_msgs())
                    or any(
                        m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == msg_id
                        for m in seen
                    )
                ),
                REPLY,
            )
            t0 = time.monotonic()
            kc.interrupt(reply=True, timeout=REPLY)
            reply = shell_reply(kc.get_shell_msg, msg_id)
            assert reply["content"]["status"] == "error"
            assert reply["content"]["ename"] == "KeyboardInterrupt"
            assert time.monotonic() - t0 < REPLY
            assert kc.run_cell("print(x)", timeout=REPLY).stdout == "42\n"  # alive, same state
            kc.shutdown(reply=True, timeout=REPLY)
        finally:
            kc.stop_channels()
        wait_for(lambda: not km.is_alive(), REPLY)
    finally:
        km.shutdown_kernel(now=True)
        km.cleanup_resources()


SCRIPT = """\
import sys
from kernelkeeper import BlockingKernelClient  # the only line that differs from jupyter_client

kc = BlockingKernelClient(connection_file=sys.argv[1])
kc.load_connection_file()
kc.start_channels()
kc.wait_for_ready(timeout=60)
msg_id = kc.execute("print(6 * 7)")
out = []
while True:
    msg = kc.get_iopub_msg(timeout=60)
    if msg["parent_header"].get("msg_id") != msg_id:
        continue
    if msg["msg_type"] == "stream":
        out.append(msg["content"]["text"])
    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
        break
reply = kc.get_shell_msg(timeout=60)
kc.stop_channels()
print(reply["content"]["status"], "".join(out).strip())
"""


def test_a_kernel_from_kernelkeeper_start_driven_by_a_jupyter_client_script(
    isolated_runtime: Path, tmp_path: Path
) -> None:
    r = cli(isolated_runtime, "start", "--name", "dropin")
    assert r.returncode == 0, r.stderr
    try:
        _kernel_id, cf = r.stdout.split()
        script = tmp_path / "drive.py"
        script.write_text(textwrap.dedent(SCRIPT))
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(isolated_runtime))
        run = subprocess.run(
            [sys.executable, str(script), cf],
            capture_output=True,
            text=True,
            timeout=150,
            env=env,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["ok", "42"]
    finally:
        stop = cli(isolated_runtime, "stop", "dropin")
        kill_recorded(isolated_runtime)
    assert stop.returncode == 0, stop.stderr

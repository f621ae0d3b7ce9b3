"""Interoperability with jupyter_client, in both directions.

(a) A kernel started by kernelkeeper is driven by jupyter_client's
    BlockingKernelClient loaded from kernelkeeper's connection file.
(b) A kernel started by jupyter_client's KernelManager is driven by
    kernelkeeper's BlockingKernelClient and AsyncKernelClient.
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterator
from typing import Any

import jupyter_client
import pytest

from helpers import sleep_cell
from kernelkeeper import AsyncKernelClient, BlockingKernelClient, ConnectionInfo, KernelManager

pytestmark = pytest.mark.timeout(60)

READY = 30.0
TIMEOUT = 15.0
Msg = dict[str, Any]


# -- (a) kernelkeeper kernel, jupyter_client client ------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_jupyter_client_drives_kernelkeeper_kernel(transport: str) -> None:
    km = KernelManager(transport=transport)
    km.start_kernel(startup_timeout=READY)
    jc = jupyter_client.BlockingKernelClient()
    try:
        # The connection file on disk has the kernel's real ports (not the 0s
        # of the handshake) and what kernelkeeper itself connects to.
        with open(km.connection_file) as f:
            on_disk = json.load(f)
        assert km.connection_info is not None
        assert ConnectionInfo.from_dict(on_disk).ports == km.connection_info.ports
        assert all(on_disk[f"{ch}_port"] > 0 for ch in ("shell", "iopub", "stdin", "control", "hb"))

        jc.load_connection_file(km.connection_file)
        assert jc.transport == transport
        jc.start_channels()
        jc.wait_for_ready(timeout=READY)
        outputs: list[Msg] = []
        reply = jc.execute_interactive("print(41+1)", output_hook=outputs.append, timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok"
        text = "".join(
            m["content"]["text"]
            for m in outputs
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )
        assert text == "42\n"
        # Both clients at once on the same kernel.
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=READY)
            assert kc.run_cell("print('ours too')", timeout=TIMEOUT).stdout == "ours too\n"
        finally:
            kc.stop_channels()
        msg_id = jc.kernel_info()
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = jc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        assert msg["content"]["language_info"]["name"] == "python"
    finally:
        jc.stop_channels()
        km.shutdown_kernel()
    assert not os.path.exists(km.connection_file)


# -- (b) jupyter_client kernel, kernelkeeper clients ---------------------------------------


@pytest.fixture(params=["tcp", "ipc"])
def jc_kernel(request: pytest.FixtureRequest) -> Iterator[jupyter_client.KernelManager]:
    km = jupyter_client.KernelManager(kernel_name="python3", transport=request.param)
    km.start_kernel()
    try:
        yield km
    finally:
        km.shutdown_kernel(now=True)


def test_our_blocking_client_drives_jupyter_client_kernel(
    jc_kernel: jupyter_client.KernelManager,
) -> None:
    kc = BlockingKernelClient(jc_kernel.connection_file)
    assert kc.connection_info.transport == jc_kernel.transport
    assert kc.connection_info.key == jc_kernel.session.key
    kc.start_channels()
    try:
        info = kc.wait_for_ready(timeout=READY)
        assert info["content"]["language_info"]["name"] == "python"
        res = kc.run_cell(
            "import sys\nprint(41+1)\nprint('e', file=sys.stderr)\n'r'", timeout=TIMEOUT
        )
        assert res.status == "ok"
        assert res.stdout == "42\n" and res.stderr == "e\n"
        assert res.result() == {"text/plain": "'r'"}
        assert "os" in kc.complete("import o", reply=True, timeout=TIMEOUT)["content"]["matches"]
        # stdin, the jupyter_client way.
        msg_id = kc.execute("x = input('q? ')\nprint(x * 2)", allow_stdin=True)
        req = kc.get_stdin_msg(timeout=TIMEOUT)
        assert req["content"]["prompt"] == "q? "
        kc.input("ab")
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        assert msg["content"]["status"] == "ok"
        # No manager: liveness comes from the heartbeat.
        assert kc.is_alive()
        assert kc.dropped == 0
    finally:
        kc.stop_channels()


async def test_our_async_client_drives_jupyter_client_kernel(
    jc_kernel: jupyter_client.KernelManager,
) -> None:
    kc = AsyncKernelClient(jc_kernel.connection_file)
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=READY)
        res = await kc.run_cell("print(41+1)", timeout=TIMEOUT)
        assert res.stdout == "42\n"
        err = await kc.run_cell("1/0", timeout=TIMEOUT)
        assert err.error is not None and err.error["ename"] == "ZeroDivisionError"
        # Interrupt through an interrupt_request (there is no manager to signal).
        msg_id = await kc.execute(sleep_cell(60, "go"), stop_on_error=False)
        loop = time.monotonic() + TIMEOUT
        while True:
            m = await kc.get_iopub_msg(timeout=max(0.0, loop - time.monotonic()))
            if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "stream":
                break
        t0 = time.monotonic()
        ireply = await kc.interrupt(reply=True, timeout=TIMEOUT)
        assert ireply["content"]["status"] == "ok"
        while True:
            m = await kc.get_shell_msg(timeout=30)
            if m["parent_header"].get("msg_id") == msg_id:
                break
        assert time.monotonic() - t0 < 30  # the sleep is 60 s
        assert m["content"]["ename"] == "KeyboardInterrupt"
        with pytest.raises(queue.Empty):
            await kc.get_stdin_msg(timeout=0.05)
        assert await kc.is_alive()
        assert kc.dropped == 0
    finally:
        await kc.aclose()

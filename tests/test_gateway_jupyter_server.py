"""jupyter_server 2.x in gateway mode, pointed at the gateway under test.

A client nobody here wrote: jupyter_server's own gateway client talks to the
gateway (REST and WebSocket), and the tests talk only to jupyter_server's API
(``/api/kernels``, ``/api/sessions``, ``/api/kernels/{id}/channels``), as
JupyterLab does. ``KK_TEST_GATEWAY=kernel_gateway`` runs the same tests
against Jupyter Kernel Gateway, which serves the same API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import psutil
import pytest

from gateway_harness import (
    Gateway,
    JupyterServer,
    WsKernel,
    gateway_kind,
    start_gateway,
    start_jupyter_server,
    wait_procs_gone,
)
from helpers import sleep_cell

pytest.importorskip("jupyter_server")

KERNEL = "python3"
# Above pytest's default: the deadlines below should be what fails, with their message.
pytestmark = pytest.mark.timeout(300)
REPLY_TIMEOUT = 60.0  # generous: not a performance assertion
INTERRUPT_TIMEOUT = 20.0  # far below the 60 s sleep it interrupts


@dataclass
class Stack:
    gateway: Gateway
    server: JupyterServer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The gateway under test, and jupyter_server in gateway mode in front of it."""
    gateway = start_gateway(gateway_kind(), tmp_path_factory.mktemp("gw-rt"))
    try:
        gateway.warm_fork_server()
        server = start_jupyter_server(
            gateway,
            tmp_path_factory.mktemp("js-root"),
            tmp_path_factory.mktemp("js-rt"),
            lab=False,
        )
    except BaseException:
        gateway.stop()
        raise
    yield Stack(gateway, server)
    # jupyter_server first: it would otherwise keep asking the gateway.
    report = server.stop() + gateway.stop()
    assert not report, "\n".join(report)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
        yield session


def kernel_pids(gateway: Gateway) -> set[int]:
    return {p.pid for p in gateway.kernel_processes()}


async def gateway_kernel_ids(http: aiohttp.ClientSession, gateway: Gateway) -> set[str]:
    async with http.get(f"{gateway.url}/api/kernels", headers=gateway.headers()) as r:
        assert r.status == 200, await r.text()
        return {k["id"] for k in await r.json()}


async def assert_kernel_gone(
    http: aiohttp.ClientSession, stack: Stack, kernel_id: str, pids: set[int]
) -> None:
    """Neither server lists the kernel, and every process it ran has exited."""
    server = stack.server
    async with http.get(f"{server.url}/api/kernels/{kernel_id}", headers=server.headers()) as r:
        assert r.status == 404, await r.text()
    async with http.get(f"{server.url}/api/kernels", headers=server.headers()) as r:
        assert kernel_id not in {k["id"] for k in await r.json()}
    assert kernel_id not in await gateway_kernel_ids(http, stack.gateway)
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    alive = await asyncio.to_thread(wait_procs_gone, procs, 30.0)
    assert not alive, f"kernel processes still running: {[p.cmdline() for p in alive]}"


async def test_kernel_lifecycle_through_jupyter_server(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Start, execute, interrupt, restart and delete a kernel through jupyter_server."""
    server = stack.server
    api = f"{server.url}/api/kernels"
    before = kernel_pids(stack.gateway)
    async with http.post(api, json={"name": KERNEL}, headers=server.headers()) as r:
        assert r.status == 201, await r.text()
        model = await r.json()
    kernel_id = model["id"]
    assert model["name"] == KERNEL
    pids: set[int] = set()
    deleted = False
    try:
        assert kernel_id in await gateway_kernel_ids(http, stack.gateway)
        ws = await WsKernel.connect(http, server.ws_url, kernel_id, server.headers())
        try:
            res = await ws.execute("print(6*7)", REPLY_TIMEOUT)
            assert res.status == "ok", res.reply
            assert res.stdout == "42\n"

            res = await ws.execute("import os; print(os.getpid())", REPLY_TIMEOUT)
            pid = int(res.stdout)
            first = psutil.Process(pid)
            pids = kernel_pids(stack.gateway) - before
            assert pid in pids, f"kernel pid {pid} is not the gateway's: {pids}"

            # Interrupt a long sleep once it runs: a KeyboardInterrupt reply, quickly.
            msg_id = await ws.send_execute(sleep_cell(60, None))
            await ws.wait_for_type(msg_id, "execute_input", REPLY_TIMEOUT)
            t0 = time.monotonic()
            async with http.post(f"{api}/{kernel_id}/interrupt", headers=server.headers()) as r:
                assert r.status == 204, await r.text()
            res = await ws.wait(msg_id, INTERRUPT_TIMEOUT)
            assert res.status == "error", res.reply
            assert res.reply is not None and res.reply["content"]["ename"] == "KeyboardInterrupt"
            assert time.monotonic() - t0 < INTERRUPT_TIMEOUT

            # Restart: a new process behind the same id, and the open WebSocket still works.
            async with http.post(f"{api}/{kernel_id}/restart", headers=server.headers()) as r:
                assert r.status == 200, await r.text()
                model = await r.json()
            assert model["id"] == kernel_id
            res = await ws.execute("import os; print(os.getpid())", REPLY_TIMEOUT)
            assert res.status == "ok", res.reply
            new_pid = int(res.stdout)
            assert new_pid != pid
            assert not await asyncio.to_thread(wait_procs_gone, [first], 30.0)
            pids |= kernel_pids(stack.gateway) - before
            res = await ws.execute("print(6*7)", REPLY_TIMEOUT)
            assert res.stdout == "42\n"
            assert ws.unmatched == []
        finally:
            await ws.close()

        async with http.delete(f"{api}/{kernel_id}", headers=server.headers()) as r:
            assert r.status == 204, await r.text()
        deleted = True
        await assert_kernel_gone(http, stack, kernel_id, pids)
    finally:
        if not deleted:
            async with http.delete(f"{api}/{kernel_id}", headers=server.headers()):
                pass


async def test_session_through_jupyter_server(stack: Stack, http: aiohttp.ClientSession) -> None:
    """A notebook session (what JupyterLab creates) starts a kernel; deleting it ends it."""
    server = stack.server
    before = kernel_pids(stack.gateway)
    body = {"path": "untitled.ipynb", "name": "untitled.ipynb", "type": "notebook",
            "kernel": {"name": KERNEL}}  # fmt: skip
    async with http.post(f"{server.url}/api/sessions", json=body, headers=server.headers()) as r:
        assert r.status == 201, await r.text()
        session = await r.json()
    session_id = session["id"]
    kernel_id = session["kernel"]["id"]
    deleted = False
    try:
        assert session["kernel"]["name"] == KERNEL
        async with http.get(f"{server.url}/api/sessions", headers=server.headers()) as r:
            assert session_id in {s["id"] for s in await r.json()}
        assert kernel_id in await gateway_kernel_ids(http, stack.gateway)
        ws = await WsKernel.connect(http, server.ws_url, kernel_id, server.headers())
        try:
            res = await ws.execute("print(6*7)", REPLY_TIMEOUT)
            assert (res.status, res.stdout) == ("ok", "42\n"), res.reply
        finally:
            await ws.close()
        pids = kernel_pids(stack.gateway) - before
        assert pids, "the session's kernel runs no process under the gateway"

        url = f"{server.url}/api/sessions/{session_id}"
        async with http.delete(url, headers=server.headers()) as r:
            assert r.status == 204, await r.text()
        deleted = True
        async with http.get(f"{server.url}/api/sessions", headers=server.headers()) as r:
            assert session_id not in {s["id"] for s in await r.json()}
        await assert_kernel_gone(http, stack, kernel_id, pids)
    finally:
        if not deleted:
            url = f"{server.url}/api/sessions/{session_id}"
            async with http.delete(url, headers=server.headers()):
                pass

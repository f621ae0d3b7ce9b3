"""nbclient executing real notebooks on kernels managed by kernelkeeper.

``NotebookClient(nb, km=...)`` with the blocking :class:`kernelkeeper.KernelManager`
and with :class:`kernelkeeper.AsyncKernelManager`, through nbclient's
``execute`` and ``async_execute``. nbclient leaves a kernel manager it was
given running unless asked (``cleanup_kc=True``) to shut it down; both ways are
checked, and the leak check of the conftest catches anything left behind.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import kernelkeeper
from kernelkeeper import AsyncKernelManager

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")

STARTUP = 60


def make_notebook() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell("# kernelkeeper"),
            new_code_cell("print('hello from the kernel')"),
            new_code_cell('from IPython.display import display, HTML\ndisplay(HTML("<b>x</b>"))'),
            new_code_cell("1+1"),
            new_code_cell('raise ValueError("boom")'),
            new_code_cell("import os\nprint(os.getpid())"),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )


def check_outputs(nb: nbformat.NotebookNode) -> int:
    """Assert each cell's outputs; return the kernel pid the last cell printed."""
    _, hello, html, add, boom, pid = nb.cells
    assert hello.outputs == [
        {"output_type": "stream", "name": "stdout", "text": "hello from the kernel\n"}
    ]
    assert len(html.outputs) == 1
    assert html.outputs[0]["output_type"] == "display_data"
    assert html.outputs[0]["data"]["text/html"] == "<b>x</b>"
    assert len(add.outputs) == 1
    assert add.outputs[0]["output_type"] == "execute_result"
    assert add.outputs[0]["data"] == {"text/plain": "2"}
    assert add.outputs[0]["execution_count"] == add.execution_count == 3
    assert len(boom.outputs) == 1
    err = boom.outputs[0]
    assert (err["output_type"], err["ename"], err["evalue"]) == ("error", "ValueError", "boom")
    assert any("boom" in line for line in err["traceback"])
    # allow_errors=True: execution went on after the error.
    assert pid.outputs[0]["name"] == "stdout"
    assert nb.metadata["language_info"]["name"] == "python"
    nbformat.validate(nb)
    return int(pid.outputs[0]["text"])


def track(km: Any) -> list[psutil.Process]:
    """The kernel processes ``km`` starts, captured at their start (pid-reuse proof)."""
    started: list[psutil.Process] = []
    km.add_event_listener(
        lambda e: started.append(psutil.Process(e.detail["pid"])) if e.kind == "started" else None
    )
    return started


def client_for(nb: nbformat.NotebookNode, km: Any, tmp_path: Path, **kw: Any) -> NotebookClient:
    return NotebookClient(
        nb,
        km=km,
        timeout=60,
        startup_timeout=STARTUP,
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
        **kw,
    )


def test_blocking_manager_sync_execute(tmp_path: Path) -> None:
    km = kernelkeeper.KernelManager()
    started = track(km)
    nb = make_notebook()
    client = client_for(nb, km, tmp_path)
    try:
        client.execute()
        pid = check_outputs(nb)
        assert [p.pid for p in started] == [pid]
        # nbclient started the kernel in the notebook's directory, and, not owning
        # the manager, left it running for us.
        assert km.has_kernel
        assert km.is_alive()
        assert km.process.pid == pid
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=STARTUP)
            assert kc.run_cell("import os; print(os.getcwd())").stdout.strip() == str(tmp_path)
        finally:
            kc.stop_channels()
    finally:
        km.shutdown_kernel()
    assert not km.has_kernel
    assert not started[0].is_running()


def test_blocking_manager_cleanup_kc(tmp_path: Path) -> None:
    km = kernelkeeper.KernelManager()
    started = track(km)
    nb = make_notebook()
    try:
        client_for(nb, km, tmp_path).execute(cleanup_kc=True)
        assert [p.pid for p in started] == [check_outputs(nb)]
        # nbclient's own cleanup: is_alive, shutdown_kernel, cleanup_resources, stop_channels.
        assert not km.has_kernel
        assert not km.is_alive()
        assert not started[0].is_running()
    finally:
        km.shutdown_kernel(now=True)


async def test_async_manager_async_execute(tmp_path: Path) -> None:
    km = AsyncKernelManager()
    started = track(km)
    nb = make_notebook()
    client = client_for(nb, km, tmp_path)
    try:
        await client.async_execute()
        pid = check_outputs(nb)
        assert [p.pid for p in started] == [pid]
        assert km.has_kernel
        assert await km.is_alive()
        assert km.process.pid == pid
        assert isinstance(client.kc, kernelkeeper.AsyncKernelClient)
        # A second NotebookClient runs another notebook on the same kernel.
        nb2 = new_notebook(cells=[new_code_cell("import os; print(os.getpid())")])
        client2 = client_for(nb2, km, tmp_path)
        await client2.async_execute()
        assert nb2.cells[0].outputs[0]["text"] == f"{pid}\n"
        await client._async_cleanup_kernel()  # what nbclient runs when it owns the kernel
        await client2._async_cleanup_kernel()
        assert not km.has_kernel
    finally:
        await km.shutdown_kernel(now=True)
    assert not started[0].is_running()


def test_async_manager_sync_execute_cleanup_kc(tmp_path: Path) -> None:
    """nbclient's classic setup: an async manager driven by the sync ``execute``."""
    km = AsyncKernelManager()
    started = track(km)
    nb = make_notebook()
    client_for(nb, km, tmp_path).execute(cleanup_kc=True)
    assert [p.pid for p in started] == [check_outputs(nb)]
    assert not km.has_kernel
    assert not started[0].is_running()


async def test_interrupt_on_timeout(tmp_path: Path) -> None:
    """nbclient interrupts a cell that runs past its timeout through km.interrupt_kernel().

    Async manager only: with a blocking client, nbclient's iopub poll
    (``get_msg(timeout=None)``) blocks its loop, so its timeout never fires;
    jupyter_client's blocking KernelManager behaves the same.
    """
    km = AsyncKernelManager()
    nb = new_notebook(
        cells=[
            new_code_cell("import time\ntime.sleep(60)"),
            new_code_cell("print('after')"),
        ]
    )
    client = NotebookClient(
        nb,
        km=km,
        timeout=2,
        startup_timeout=STARTUP,
        interrupt_on_timeout=True,
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        await client.async_execute(cleanup_kc=True)
    finally:
        await km.shutdown_kernel(now=True)
    sleep, after = nb.cells
    assert [o.get("ename") for o in sleep.outputs] == ["KeyboardInterrupt"]
    assert after.outputs == [{"output_type": "stream", "name": "stdout", "text": "after\n"}]
    assert not km.has_kernel

"""papermill runs a parameterized notebook through kernelkeeper's managers (passed as km=)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_core.utils import run_sync

import kernelkeeper

papermill = pytest.importorskip("papermill")

pytestmark = pytest.mark.timeout(90)


def _notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(x * 2)"),
        nbformat.v4.new_code_cell("x + 0.5"),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def _outputs(nb: Any) -> list[Any]:
    return [o for c in nb.cells for o in c.get("outputs", [])]


@pytest.mark.parametrize("flavour", ["blocking", "async"])
def test_papermill_executes_with_our_manager(tmp_path: Path, flavour: str) -> None:
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    _notebook(src)
    km: Any = (
        kernelkeeper.KernelManager("python3")
        if flavour == "blocking"
        else kernelkeeper.AsyncKernelManager("python3")
    )
    try:
        result = papermill.execute_notebook(
            str(src), str(out), parameters={"x": 21}, km=km, progress_bar=False, cwd=str(tmp_path)
        )
        outputs = _outputs(result)
        assert outputs[0]["name"] == "stdout" and outputs[0]["text"] == "42\n"
        assert outputs[1]["data"]["text/plain"] == "21.5"
        assert out.exists()
        assert _outputs(nbformat.read(out, as_version=4))[0]["text"] == "42\n"
    finally:
        # papermill leaves a manager it was given running; it is ours to stop.
        # An async manager lives on the loop that started its kernel: papermill's
        # (jupyter_core's per-thread loop), which run_sync drives again here.
        if flavour == "blocking":
            km.shutdown_kernel()
        else:
            run_sync(km.shutdown_kernel)()
    assert not km.has_kernel


def test_async_manager_refuses_a_foreign_loop(tmp_path: Path) -> None:
    """Driving an async manager from another loop is a clear error, not a hang."""
    km = kernelkeeper.AsyncKernelManager("python3")
    run_sync(km.start_kernel)()
    try:
        with pytest.raises(kernelkeeper.KernelError, match="event loop"):
            asyncio.run(km.is_alive())
        assert run_sync(km.is_alive)()
    finally:
        run_sync(km.shutdown_kernel)()
    assert not km.has_kernel


def test_async_client_sends_with_no_event_loop_current() -> None:
    """papermill calls kc.kernel_info() outside any running loop: the request goes out."""

    async def ready(kc: kernelkeeper.AsyncKernelClient) -> None:
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)

    async def reply_to(kc: kernelkeeper.AsyncKernelClient, msg_id: str) -> dict[str, Any]:
        while True:
            msg = await kc.get_shell_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    km = kernelkeeper.AsyncKernelManager("python3")
    run_sync(km.start_kernel)()
    kc = km.client()
    try:
        run_sync(ready)(kc)
        asyncio.set_event_loop(None)  # no current loop in this thread, none running
        msg_id = kc.kernel_info()
        assert isinstance(msg_id, str)
        reply = run_sync(reply_to)(kc, msg_id)
        assert reply["msg_type"] == "kernel_info_reply"
    finally:
        run_sync(kc.aclose)()
        run_sync(km.shutdown_kernel)()

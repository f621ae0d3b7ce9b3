"""nbclient and papermill take kernelkeeper by dotted name, through the interop classes.

``kernel_manager_class="kernelkeeper.jupyter_client_interop.AsyncKernelManager"``
(and ``...KernelManager``) passes nbclient's traitlets check, since those classes
subclass jupyter_client's, and runs real notebooks on kernels kernelkeeper
manages: a printed result, an error cell (``CellExecutionError``), a cell
interrupted by nbclient's ``timeout``, and a kernel that dies
(``DeadKernelError``). The rest of jupyter_client's surface on those classes
either reaches the kernelkeeper manager or refuses loudly.
"""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import jupyter_client
import nbformat
import psutil
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError
from nbformat.v4 import new_code_cell, new_notebook
from traitlets.config import Config, LoggingConfigurable

import kernelkeeper
from kernelkeeper import jupyter_client_interop as interop
from kernelkeeper.jupyter_client_interop import InteropNotSupported

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX only"),
    pytest.mark.timeout(180),
]

ASYNC = "kernelkeeper.jupyter_client_interop.AsyncKernelManager"
BLOCKING = "kernelkeeper.jupyter_client_interop.KernelManager"
STARTUP = 60


def notebook(*sources: str) -> nbformat.NotebookNode:
    return new_notebook(
        cells=[new_code_cell(s) for s in sources],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )


class Seen:
    """The manager nbclient made, and its kernel's process, caught at notebook start."""

    def __init__(self) -> None:
        self.km: Any = None
        self.proc: psutil.Process | None = None

    def hook(self, client: NotebookClient) -> None:
        def on_start(notebook: Any = None, **_: Any) -> None:
            self.km = client.km
            self.proc = psutil.Process(client.km.process.pid)  # through to kernelkeeper's

        client.on_notebook_start = on_start


def client_for(nb: nbformat.NotebookNode, name: str, tmp_path: Path, **kw: Any) -> NotebookClient:
    kw.setdefault("timeout", 60)
    return NotebookClient(
        nb,
        kernel_manager_class=name,
        startup_timeout=STARTUP,
        resources={"metadata": {"path": str(tmp_path)}},
        **kw,
    )


def text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o["output_type"] == "stream")


# -- the traitlets seam ---------------------------------------------------------------


def test_only_the_interop_module_imports_jupyter_client() -> None:
    code = (
        "import sys, kernelkeeper\n"
        "for name in ('AsyncKernelManager', 'KernelManager', 'MultiKernelManager',\n"
        "             'AsyncMultiKernelManager', 'BlockingKernelClient', 'KernelPool'):\n"
        "    getattr(kernelkeeper, name)\n"
        "import kernelkeeper.cli, kernelkeeper.gateway\n"
        "core = 'jupyter_client' in sys.modules or 'traitlets' in sys.modules\n"
        "import kernelkeeper.jupyter_client_interop\n"
        "print(core, 'jupyter_client' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("name", [ASYNC, BLOCKING])
def test_dotted_names_pass_nbclients_trait(name: str) -> None:
    client = NotebookClient(notebook(), kernel_manager_class=name)
    cls = client.kernel_manager_class
    assert cls is {ASYNC: interop.AsyncKernelManager, BLOCKING: interop.KernelManager}[name]
    assert issubclass(cls, jupyter_client.KernelManager)
    expected = jupyter_client.AsyncKernelManager if name == ASYNC else jupyter_client.KernelManager
    assert issubclass(cls, expected)


# -- nbclient ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [ASYNC, BLOCKING])
def test_nbclient_runs_a_notebook_by_dotted_name(name: str, tmp_path: Path) -> None:
    nb = notebook("print(6 * 7)", "import os\nprint(os.getpid())\nprint(os.getcwd())")
    client = client_for(nb, name, tmp_path)
    seen = Seen()
    seen.hook(client)
    client.execute()
    assert nb.cells[0].outputs == [{"output_type": "stream", "name": "stdout", "text": "42\n"}]
    pid, cwd = text(nb.cells[1]).split()
    # The kernel was kernelkeeper's: its manager started the process that ran the cells,
    # in the notebook's directory, and nbclient's cleanup (it owned the manager) stopped it.
    core = {ASYNC: kernelkeeper.AsyncKernelManager, BLOCKING: kernelkeeper.KernelManager}[name]
    assert isinstance(seen.km.kernelkeeper_manager, core)
    assert seen.proc is not None and seen.proc.pid == int(pid)
    assert cwd == str(tmp_path)
    assert nb.metadata["language_info"]["name"] == "python"
    assert not seen.km.has_kernel
    assert seen.km.state is kernelkeeper.KernelState.DEAD
    seen.proc.wait(timeout=10)  # gone, not a zombie of ours
    assert client.km is None


async def test_nbclient_async_execute_by_dotted_name(tmp_path: Path) -> None:
    nb = notebook("print(6 * 7)")
    client = client_for(nb, ASYNC, tmp_path)
    await client.async_execute()
    assert text(nb.cells[0]) == "42\n"


@pytest.mark.parametrize("name", [ASYNC, BLOCKING])
def test_an_error_cell_raises_cell_execution_error(name: str, tmp_path: Path) -> None:
    nb = notebook("x = 1", 'raise ValueError("boom")', "print('never')")
    client = client_for(nb, name, tmp_path)
    seen = Seen()
    seen.hook(client)
    with pytest.raises(CellExecutionError) as caught:
        client.execute()
    assert caught.value.ename == "ValueError" and caught.value.evalue == "boom"
    err = nb.cells[1].outputs[0]
    assert (err["output_type"], err["ename"], err["evalue"]) == ("error", "ValueError", "boom")
    assert nb.cells[2].outputs == []  # execution stopped at the error
    assert seen.proc is not None
    seen.proc.wait(timeout=10)  # the kernel was shut down all the same


async def test_a_cell_past_its_timeout_is_interrupted(tmp_path: Path) -> None:
    # Async manager only: with a blocking client nbclient's iopub poll
    # (get_msg(timeout=None)) blocks its loop, so its timeout never fires
    # (jupyter_client's blocking KernelManager behaves the same).
    nb = notebook("import time\ntime.sleep(60)", "print('after')")
    client = client_for(nb, ASYNC, tmp_path, timeout=2, interrupt_on_timeout=True)
    client.allow_errors = True
    seen = Seen()
    seen.hook(client)
    await client.async_execute()
    sleep, after = nb.cells
    assert [o.get("ename") for o in sleep.outputs] == ["KeyboardInterrupt"]
    assert text(after) == "after\n"  # the same kernel went on
    assert seen.proc is not None
    seen.proc.wait(timeout=10)


@pytest.mark.parametrize("name", [ASYNC, BLOCKING])
def test_a_dying_kernel_is_dead_kernel_error(name: str, tmp_path: Path) -> None:
    nb = notebook("print('up')", "import os\nos._exit(3)", "print('never')")
    client = client_for(nb, name, tmp_path, shell_timeout_interval=1)
    seen = Seen()
    seen.hook(client)
    with pytest.raises(DeadKernelError):
        client.execute()
    assert text(nb.cells[0]) == "up\n"
    assert nb.cells[2].outputs == []
    assert seen.proc is not None
    seen.proc.wait(timeout=10)
    assert seen.km.state is kernelkeeper.KernelState.DEAD


# -- papermill ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [ASYNC, BLOCKING])
def test_papermill_by_dotted_name(name: str, tmp_path: Path) -> None:
    papermill = pytest.importorskip("papermill")
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nb = notebook("x = 1", "print(x * 2)")
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, src)
    result = papermill.execute_notebook(
        str(src), str(out), parameters={"x": 21}, kernel_manager_class=name, progress_bar=False
    )
    assert [text(c) for c in result.cells if c.get("outputs")] == ["42\n"]
    written = nbformat.read(out, as_version=4)
    assert any(text(c) == "42\n" for c in written.cells)


def test_papermill_error_cell_by_dotted_name(tmp_path: Path) -> None:
    papermill = pytest.importorskip("papermill")
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(notebook('raise ValueError("boom")'), src)
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        papermill.execute_notebook(str(src), str(out), kernel_manager_class=ASYNC)
    assert caught.value.ename == "ValueError"


# -- the rest of jupyter_client's surface ---------------------------------------------------


def test_constructor_keywords_reach_the_kernelkeeper_manager() -> None:
    c = Config()
    c.KernelManager.transport = "ipc"
    c.KernelManager.shutdown_wait_time = 2.0
    c.NotebookClient.timeout = 10  # nbclient passes its whole config: not ours to judge
    log = logging.getLogger("kk-test-interop")
    km = interop.AsyncKernelManager(kernel_name="python3", config=c, log=log)
    assert (km.transport, km.shutdown_wait_time, km.kernel_name) == ("ipc", 2.0, "python3")
    assert km.kernelkeeper_manager.transport == "ipc"
    assert km.log is log and km.kernelkeeper_manager.log is log
    km.transport = "tcp"  # written through, not into a traitlets copy
    assert km.kernelkeeper_manager.transport == "tcp"
    assert km.ports == [0, 0, 0, 0, 0] and not km.has_kernel
    with pytest.raises(TypeError, match=r"KernelManager\.kernel_cmd"):
        interop.KernelManager(config={"KernelManager": {"kernel_cmd": ["x"]}})


async def test_the_lifecycle_goes_through_the_kernelkeeper_manager() -> None:
    km = interop.AsyncKernelManager()
    assert inspect.iscoroutinefunction(km.start_kernel)
    await km.start_kernel()
    try:
        core = km.kernelkeeper_manager
        assert km.has_kernel and await km.is_alive()
        assert km.ready.done()
        info = km.get_connection_info()
        assert km.ports == [
            info[f"{ch}_port"] for ch in ("shell", "iopub", "stdin", "hb", "control")
        ]
        assert km.shell_port == core.connection_info.shell_port
        assert km.session.key == info["key"]
        kc = km.client()
        assert isinstance(kc, kernelkeeper.AsyncKernelClient)
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=STARTUP)
            assert (await kc.run_cell("6 * 7", timeout=STARTUP)).result() == {"text/plain": "42"}
        finally:
            kc.stop_channels()
        pid = km.process.pid
        await km.restart_kernel()
        assert km.process.pid != pid and await km.is_alive()
        assert core.process is km.process  # one manager, seen from both sides
    finally:
        await km.shutdown_kernel(now=True)
    assert not km.has_kernel and not await km.is_alive()


def test_jupyter_client_machinery_refuses_loudly() -> None:
    km = interop.AsyncKernelManager()
    for call in (
        km.pre_start_kernel,
        km.post_start_kernel,
        km.write_connection_file,
        km.cleanup_random_ports,
        km._launch_kernel,
    ):
        with pytest.raises(InteropNotSupported):
            call()
    with pytest.raises(NotImplementedError):  # jupyter_client's way to catch it too
        _ = km.kernel_spec_manager
    with pytest.raises(InteropNotSupported):
        km.client_class = "jupyter_client.BlockingKernelClient"
    with pytest.raises(InteropNotSupported):
        km.shell_port = 5555
    assert isinstance(InteropNotSupported("x"), kernelkeeper.KernelError)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (interop.AsyncKernelManager, jupyter_client.AsyncKernelManager),
        (interop.KernelManager, jupyter_client.KernelManager),
    ],
)
def test_no_public_name_falls_through_to_jupyter_client(ours: type, theirs: type) -> None:
    """Every public name of jupyter_client's class is ours: forwarded or refusing."""
    traitlets_names = set(dir(LoggingConfigurable))
    public = [n for n in dir(theirs) if not n.startswith("_") and n not in traitlets_names]
    assert "start_kernel" in public and "client_class" in public
    from_jupyter_client = []
    for name in public:
        owner = next(c for c in ours.__mro__ if name in vars(c))
        if owner.__module__.startswith("jupyter_client"):
            from_jupyter_client.append(name)
    assert from_jupyter_client == []
    # No public trait of jupyter_client's is left for traitlets to hold a stale copy of.
    public_traits = {n for n in ours.class_trait_names() if not n.startswith("_")}
    assert public_traits == {"config", "log", "parent"}

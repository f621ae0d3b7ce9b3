"""Shared fixtures: an isolated Jupyter runtime dir, and a leak check after every test.

Every test runs with its own JUPYTER_RUNTIME_DIR; afterwards no connection
file or ipc socket may be left in it, and no process started during the
test may still be alive. A test that leaks fails.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import kernel_script
from kernelkeeper import AsyncKernelManager, forkserver, states

# With the fork server on (the default), the default kernels' templates are
# started before the first test and outlive each test (see forkserver_plugin);
# ``KERNELKEEPER_FORKSERVER=0`` runs the suite with every kernel spawned.
if forkserver.supported() and forkserver.enabled() and "tests.forkserver_plugin" not in sys.modules:
    pytest_plugins = ["forkserver_plugin"]

# Every state change in the suite is checked against the transition table:
# one that is not in it fails the test that caused it.
states.strict = True

if sys.platform.startswith("linux"):
    # Become a subreaper: a kernel's children orphaned by its death are
    # re-parented to this process, so the leak check below sees them too.
    import ctypes

    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

LEAK_GRACE = 10.0  # seconds a process that is already exiting may take to go


@pytest.fixture(scope="session", autouse=True)
def ipython_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Kernels keep their IPython history database out of the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
        yield


@pytest.fixture(autouse=True)
def isolated_runtime(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Path]:
    # Short path: ipc socket paths must stay under the 107-byte limit.
    runtime = Path(tmp_path_factory.mktemp("rt"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield runtime
    if request.node.get_closest_marker("allow_leaks"):
        return
    leaked = [p for p in me.children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(leaked, timeout=LEAK_GRACE)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    left = sorted(
        str(p.relative_to(runtime)) for p in runtime.rglob("*") if p.name.startswith("kernel-")
    )
    assert not alive, f"processes leaked by the test: {[p.pid for p in alive]}"
    assert not left, f"files left in the runtime dir: {left}"


@pytest.fixture
def kernel_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Install a kernelspec for a test kernel script; returns the kernel name.

    ``make("no_shutdown_reply", env={...}, interrupt_mode="message")``
    """
    root = tmp_path / "jupyter"
    (root / "kernels").mkdir(parents=True)
    monkeypatch.setenv("JUPYTER_PATH", str(root))

    def make(
        script: str,
        name: str | None = None,
        env: dict[str, str] | None = None,
        interrupt_mode: str = "signal",
        argv: list[str] | None = None,
    ) -> str:
        name = name or script.replace("_", "-")
        d = root / "kernels" / name
        d.mkdir()
        spec: dict[str, Any] = {
            "argv": argv or [sys.executable, kernel_script(script), "-f", "{connection_file}"],
            "display_name": f"test {script}",
            "language": "python",
            "interrupt_mode": interrupt_mode,
            "env": env or {},
        }
        (d / "kernel.json").write_text(json.dumps(spec))
        return name

    return make


@pytest.fixture
async def managers() -> AsyncIterator[Callable[..., AsyncKernelManager]]:
    """``make(kernel_name, **kw)``: an AsyncKernelManager killed at teardown."""
    made: list[AsyncKernelManager] = []

    def make(kernel_name: str = "", **kwargs: Any) -> AsyncKernelManager:
        km = AsyncKernelManager(kernel_name, **kwargs)
        made.append(km)
        return km

    yield make
    for km in made:
        await km.shutdown_kernel(now=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_leaks: skip the per-test leak check")

"""A manager process that dies by SIGKILL must not leave kernels (or their children) behind.

A small script started here runs kernelkeeper's blocking API: one ipykernel
(the handshake path, guarded by the launcher's watchdog pipe) and one
``spawn_children`` fault kernel (the pre-assigned-port path). It reports the
pids as JSON and blocks; the test SIGKILLs it and then waits for every process
it left to disappear. This process is a child subreaper (see conftest), so
whatever gets orphaned is re-parented here and could not hide.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and subreapers are Linux-only"
)

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import kernelkeeper

    km1, kc1 = kernelkeeper.start_new_kernel(startup_timeout=60)
    km2, kc2 = kernelkeeper.start_new_kernel(startup_timeout=60, kernel_name=sys.argv[1])
    res = kc1.run_cell(
        "import subprocess, sys\\n"
        "_c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\\n"
        "print(_c.pid)",
        timeout=30,
    )
    print(json.dumps({
        "ipykernel": km1.process.pid,
        "ipykernel_child": int(res.stdout),
        "ipykernel_files": [km1.connection_file],
        "generic": km2.process.pid,
        "generic_handshake": km2.ipykernel,
        "generic_files": [km2.connection_file],
    }), flush=True)
    sys.stdin.read()
    """
)


def _dead(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[int]:
    """Wait for the processes to exit (zombies count); reap the ones orphaned to us.

    Returns the pids still alive at the deadline.
    """
    deadline = time.monotonic() + timeout
    while not all(_dead(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    for p in procs:
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if p.is_running() and p.ppid() == os.getpid():
                os.waitpid(p.pid, os.WNOHANG)
    return [p.pid for p in procs if not _dead(p)]


def wait_removed(paths: list[str], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while any(os.path.exists(p) for p in paths) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [p for p in paths if os.path.exists(p)]


def read_children(path: Path, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return [int(pid) for pid in json.loads(path.read_text())]


def test_sigkilled_manager_leaves_nothing(
    kernel_dir: Callable[..., str], tmp_path: Path, isolated_runtime: Path
) -> None:
    children_file = tmp_path / "children.json"
    name = kernel_dir("spawn_children", env={"KK_TEST_CHILDREN_FILE": str(children_file)})
    script = tmp_path / "manager.py"
    script.write_text(SCRIPT)
    manager = subprocess.Popen(
        [sys.executable, str(script), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=os.environ.copy(),  # JUPYTER_RUNTIME_DIR and JUPYTER_PATH of this test
    )
    try:
        assert manager.stdout is not None
        line = manager.stdout.readline()  # blocks until the script reports (or dies)
        assert line, f"manager script died (exit code {manager.wait(timeout=30)})"
        info: dict[str, Any] = json.loads(line)
        assert not info["generic_handshake"]  # the fault kernel takes the other path
        generic_children = read_children(children_file)
        procs = {
            "ipykernel": psutil.Process(info["ipykernel"]),
            "ipykernel_child": psutil.Process(info["ipykernel_child"]),
            "generic": psutil.Process(info["generic"]),
            **{f"generic_child_{i}": psutil.Process(pid) for i, pid in enumerate(generic_children)},
        }
        assert all(p.is_running() for p in procs.values())
        files = info["ipykernel_files"] + info["generic_files"]
        assert all(os.path.exists(f) for f in files)
    finally:
        manager.kill()
        manager.wait(timeout=30)
        if manager.stdin:
            manager.stdin.close()
        if manager.stdout:
            manager.stdout.close()
    assert manager.returncode == -signal.SIGKILL

    survivors = wait_gone(list(procs.values()), timeout=10)
    names = {p.pid: n for n, p in procs.items()}
    assert [names[pid] for pid in survivors] == []
    # Nobody is left to clean up: the kernels must have removed their own files.
    assert wait_removed(files, timeout=10) == []

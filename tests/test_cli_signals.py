"""Ctrl-C (SIGINT to the command) during ``kernelkeeper run``: the first
interrupts the running cell, a second stops the kernel; and a kernel that
dies mid-run gives exit status 3."""

from __future__ import annotations

import signal
from pathlib import Path

import nbformat
import psutil

from cli_helpers import cli, cli_popen
from helpers import sleep_cell, wait_for, wait_gone

# The pid is printed inside the try: an interrupt that comes right after it is
# read must land in the try, whatever line the kernel is on.
CODE = """\
import os, time
try:
    print(os.getpid(), flush=True)
    for _ in range(6000):
        time.sleep(0.1)
except KeyboardInterrupt:
    print('interrupted', flush=True)
time.sleep(600)
"""


def test_first_ctrl_c_interrupts_second_stops(isolated_runtime: Path) -> None:
    proc = cli_popen(isolated_runtime, "run", "-c", CODE)
    try:
        assert proc.stdout is not None
        kernel = psutil.Process(int(proc.stdout.readline()))
        proc.send_signal(signal.SIGINT)
        # The kernel got the interrupt and runs on.
        assert proc.stdout.readline() == "interrupted\n"
        assert kernel.is_running() and proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupting the kernel" in err and "stopped the kernel" in err
        wait_gone([kernel], timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_in_a_notebook_interrupts_the_cell_and_writes_it(
    isolated_runtime: Path, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        # The file exists once this cell runs (its outputs go to the notebook, not to us).
        nbformat.v4.new_code_cell(f"open({str(started)!r}, 'w').close()\n" + sleep_cell(600, None)),
        nbformat.v4.new_code_cell("print('never')"),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    proc = cli_popen(isolated_runtime, "run", str(path))
    try:
        wait_for(started.exists, timeout=90)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = nbformat.read(str(path), as_version=4)
    assert out.cells[0].execution_count == 1
    assert out.cells[1].outputs[-1].ename == "KeyboardInterrupt"
    assert out.cells[2].outputs == [] and out.cells[2].execution_count is None


def test_kernel_dying_mid_script_exits_3(isolated_runtime: Path, tmp_path: Path) -> None:
    script = tmp_path / "dies.py"
    # The kernel dies a moment after its output: an os._exit right after a print
    # can drop the output still queued in the kernel's own zmq socket.
    script.write_text("print('before', flush=True)\nimport os, time\ntime.sleep(1)\nos._exit(9)\n")
    r = cli(isolated_runtime, "run", str(script))
    assert r.returncode == 3, r.stderr
    assert r.stdout == "before\n"
    assert "Kernel died" in r.stderr and "exit code 9" in r.stderr


def test_sigterm_stops_the_kernel_and_exits_143(isolated_runtime: Path) -> None:
    proc = cli_popen(isolated_runtime, "run", "-c", CODE)
    try:
        assert proc.stdout is not None
        kernel = psutil.Process(int(proc.stdout.readline()))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        wait_gone([kernel], timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

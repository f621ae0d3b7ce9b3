"""Long-lived kernels through the real console script: start, ls, attach,
interrupt, restart, stop and prune. Every test stops what it starts (the
kernels outlive the command, so they are re-parented to the test process)."""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cli_helpers import cli, cli_popen, kill_recorded, reap, records
from helpers import sleep_cell, wait_for, wait_gone


@pytest.fixture
def runtime(isolated_runtime: Path) -> Iterator[Path]:
    yield isolated_runtime
    kill_recorded(isolated_runtime)


def start(runtime: Path, *args: str) -> tuple[str, str]:
    r = cli(runtime, "start", *args)
    assert r.returncode == 0, r.stderr
    kernel_id, cf = r.stdout.split()
    return kernel_id, cf


def ls(runtime: Path) -> dict[str, dict[str, object]]:
    r = cli(runtime, "ls", "--json")
    assert r.returncode == 0, r.stderr
    return {k["name"] or k["id"]: k for k in json.loads(r.stdout)["kernels"]}


def test_start_ls_attach_stop(runtime: Path, tmp_path: Path) -> None:
    kernel_id, cf = start(runtime, "--name", "work", "--cwd", str(tmp_path))
    # The command has exited; the kernel runs on, in a session of its own.
    (rec,) = records(runtime)
    assert rec["id"] == kernel_id and rec["name"] == "work"
    record_file = runtime / f"kernelkeeper-{kernel_id}.json"
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600
    assert Path(cf).exists()
    proc = psutil.Process(rec["pid"])
    assert proc.is_running() and os.getsid(proc.pid) == proc.pid
    assert "without encryption" not in Path(rec["log"]).read_text()

    table = cli(runtime, "ls")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "KERNEL", "PID", "STATE", "UPTIME", "MEMORY", "CPU"]
    assert row.split()[:5] == [kernel_id[:8], "work", "pyimport/kernel", str(proc.pid), "running"]
    info = ls(runtime)["work"]
    assert info["state"] == "running" and info["rss"] > 0 and info["processes"] >= 1  # type: ignore[operator]

    a = cli(runtime, "attach", "work", "-c", "import os; x = 41; print(os.getcwd())")
    assert (a.returncode, a.stdout) == (0, f"{tmp_path}\n"), a.stderr
    # The kernel kept its state; the prompt reads line by line from stdin.
    b = cli(runtime, "attach", kernel_id[:8], input="x += 1\nprint(x)\n1 / 0\nx\n")
    assert b.returncode == 1, b.stderr  # a line failed
    assert b.stdout == "42\n42\n" and "ZeroDivisionError" in b.stderr
    script = tmp_path / "more.py"
    script.write_text("print(x * 2)\n")
    c = cli(runtime, "attach", "work", str(script))
    assert (c.returncode, c.stdout) == (0, "84\n"), c.stderr

    stop = cli(runtime, "stop", "work")
    assert stop.returncode == 0, stop.stderr
    assert "stopped" in stop.stderr
    wait_gone([proc], timeout=30, reap=True)
    assert records(runtime) == [] and not Path(cf).exists()
    assert not list(runtime.glob("kernelkeeper-*"))


def test_interrupt_and_restart(runtime: Path) -> None:
    kernel_id, cf = start(runtime, "--name", "busy")
    before = json.loads(Path(cf).read_text())
    run = cli_popen(runtime, "attach", "busy", "-c", sleep_cell(600, "go"))
    try:
        assert run.stdout is not None
        assert run.stdout.readline() == "go\n"
        r = cli(runtime, "interrupt", "busy")
        assert r.returncode == 0, r.stderr
        _, err = run.communicate(timeout=60)
        assert run.returncode == 1
        assert "KeyboardInterrupt" in err
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    old_pid = records(runtime)[0]["pid"]
    cli(runtime, "attach", "busy", "-c", "x = 1").check_returncode()
    r = cli(runtime, "restart", "busy")
    assert r.returncode == 0, r.stderr
    (rec,) = records(runtime)
    assert rec["pid"] != old_pid and rec["restarts"] == 1
    reap([old_pid])
    # Same connection file, ports and key: old clients' files still work.
    after = json.loads(Path(cf).read_text())
    assert {k: after[k] for k in before} == before
    fresh = cli(runtime, "attach", "busy", "-c", "print('x' in dir())")
    assert (fresh.returncode, fresh.stdout) == (0, "False\n"), fresh.stderr
    now = cli(runtime, "stop", "--now", kernel_id)
    assert now.returncode == 0 and "killed" in now.stderr, now.stderr
    wait_gone([psutil.Process(rec["pid"])], timeout=30, reap=True)


def test_dead_kernel_shows_dead_and_prune_removes_it(runtime: Path) -> None:
    start(runtime, "--name", "doomed")
    kept_id, _ = start(runtime, "--name", "kept")
    doomed = next(r for r in records(runtime) if r["name"] == "doomed")
    proc = psutil.Process(doomed["pid"])
    os.killpg(proc.pid, signal.SIGKILL)
    wait_gone([proc], timeout=30, reap=True)
    kernels = ls(runtime)
    assert kernels["doomed"]["state"] == "dead" and kernels["kept"]["state"] == "running"
    dead_attach = cli(runtime, "attach", "doomed", "-c", "1")
    assert dead_attach.returncode == 2 and "dead" in dead_attach.stderr
    r = cli(runtime, "prune")
    assert r.returncode == 0, r.stderr
    assert f"removed {doomed['id'][:8]} (doomed)" in r.stdout
    assert [k["id"] for k in records(runtime)] == [kept_id]
    assert not Path(doomed["connection_file"]).exists() and not Path(doomed["log"]).exists()
    cli(runtime, "stop", "kept").check_returncode()


def test_unknown_id_or_name_and_duplicate_name(runtime: Path) -> None:
    for cmd in (["stop"], ["interrupt"], ["restart"], ["attach"]):
        r = cli(runtime, *cmd, "nobody")
        assert r.returncode == 2, r.stderr
        assert "no kernel with id or name 'nobody'" in r.stderr and "start" in r.stderr
    start(runtime, "--name", "solo")
    dup = cli(runtime, "start", "--name", "solo")
    assert dup.returncode == 2 and "already named 'solo'" in dup.stderr
    r = cli(runtime, "stop", "nobody")
    assert "solo" in r.stderr  # the known ones are listed
    unknown_kernel = cli(runtime, "start", "-k", "no-such-kernel-kk")
    assert unknown_kernel.returncode == 2 and "pyimport/kernel" in unknown_kernel.stderr
    assert len(records(runtime)) == 1
    cli(runtime, "stop", "solo").check_returncode()
    wait_for(lambda: not records(runtime), timeout=10)


def test_ipc_kernel(runtime: Path) -> None:
    kernel_id, cf = start(runtime, "--transport", "ipc")
    assert json.loads(Path(cf).read_text())["transport"] == "ipc"
    r = cli(runtime, "attach", kernel_id, "-c", "print(6 * 7)")
    assert (r.returncode, r.stdout) == (0, "42\n"), r.stderr
    pid = records(runtime)[0]["pid"]
    cli(runtime, "stop", kernel_id).check_returncode()
    reap([pid])
    assert not [p for p in runtime.iterdir() if p.name.startswith("kernel")]


def test_attached_kernel_dying_exits_3(runtime: Path) -> None:
    start(runtime, "--name", "fragile")
    (rec,) = records(runtime)
    r = cli(runtime, "attach", "fragile", "-c", "import os; os._exit(4)")
    assert r.returncode == 3, r.stderr
    assert "heartbeat" in r.stderr
    wait_gone([psutil.Process(rec["pid"])], timeout=30, reap=True)
    assert ls(runtime)["fragile"]["state"] == "dead"
    cli(runtime, "prune").check_returncode()
    assert records(runtime) == []

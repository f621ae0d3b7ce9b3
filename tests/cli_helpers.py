"""Running the real ``kernelkeeper`` console script in a subprocess (CLI tests)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from helpers import wait_gone

_SCRIPT = Path(sys.executable).parent / "kernelkeeper"
#: The installed console script (``python -m kernelkeeper`` where it is missing).
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "kernelkeeper"]

ANSI = "\x1b["


def cli_env(runtime: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime))
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


def cli(
    runtime: Path,
    *args: str,
    input: str | None = None,
    timeout: float = 120,
    cwd: str | Path | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run ``kernelkeeper ARGS`` to completion, output captured (so: a pipe, not a tty)."""
    return subprocess.run(
        [*COMMAND, *args],
        env=cli_env(runtime, **env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def cli_popen(runtime: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, *args],
        env=cli_env(runtime, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def records(runtime: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(runtime.glob("kernelkeeper-*.json")):
        out.append(json.loads(p.read_text()))
    return out


def kill_recorded(runtime: Path) -> None:
    """Kill every kernel a test left recorded, and reap those orphaned to us.

    ``start``'s kernels outlive the command; once it exits they are
    re-parented to the test process (a subreaper), which must reap them.
    """
    procs = []
    for rec in records(runtime):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            p = psutil.Process(rec["pid"])
            if abs(p.create_time() - rec["create_time"]) < 1.0:
                os.killpg(rec["pid"], signal.SIGKILL)
                procs.append(p)
        for path in (rec["connection_file"], rec["log"]):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    wait_gone(procs, timeout=30, reap=True)


def reap(pids: list[int]) -> None:
    """Reap exited kernels that were orphaned to the test process."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def no_leftovers(runtime: Path) -> Iterator[None]:
    try:
        yield
    finally:
        kill_recorded(runtime)


def cli_tty(runtime: Path, *args: str, timeout: float = 120, **env: str) -> tuple[int, str]:
    """Run ``kernelkeeper ARGS`` with stdout and stderr on a pseudo-terminal;
    returns the exit status and everything written to the terminal."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*COMMAND, *args],
        env=cli_env(runtime, TERM="xterm", **env),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, b"".join(chunks).decode("utf-8", "replace")

"""Fork safety of the blocking face.

A child forked from a process that used the blocking API gets a loop thread
of its own for new objects; objects made before the fork raise a clear
KernelError instead of hanging on the parent's loop (which does not run in
the child); and the child's exit leaves the parent's kernels alone.

Forking a process with threads (pytest's, with the library's loop thread) is
what is tested, so each scenario runs in a fresh interpreter of its own,
under a hard deadline: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.timeout(240),
]

DEADLINE = 180  # for the whole scenario, generous on a loaded 2-core machine

PRELUDE = """\
import faulthandler, json, os, sys, threading
# No faulthandler watchdog in the parent: its thread does not survive the fork,
# and re-arming it in the child would then wait for that thread for ever.
import kernelkeeper as kk
from kernelkeeper import loopthread

def report(fd, **kw):
    os.write(fd, (json.dumps(kw) + "\\n").encode())

def outcome(fn):
    try:
        return "ok:" + repr(fn())
    except kk.KernelError as e:
        return "KernelError:" + str(e)
    except BaseException as e:
        return "other:" + repr(e)

km, kc = kk.start_new_kernel(startup_timeout=60)
assert kc.run_cell("1 + 1").result() == {{"text/plain": "2"}}
parent_kernel = km.process.pid
"""

OS_FORK = """\
r, w = os.pipe()
# Fork while another thread of ours holds the loop-thread lock: the child must
# not inherit it locked.
with loopthread._portal_lock:
    pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later({deadline}, exit=True)  # a hang shows where
    os.close(r)
    old_client = outcome(lambda: kc.run_cell("1").result())
    old_manager = outcome(km.is_alive)
    def fresh():
        with kk.run_kernel(startup_timeout=60) as kc2:
            return kc2.run_cell("2 + 2").result()
    new = outcome(fresh)
    blocking_client = outcome(lambda: kk.BlockingKernelClient(km.connection_file).channels_running)
    report(w, old_client=old_client, old_manager=old_manager, new=new,
           blocking_client=blocking_client, pid=os.getpid())
    os.close(w)
    sys.exit(0)  # a normal exit: atexit handlers run in the child
os.close(w)
with os.fdopen(r) as f:
    child = json.loads(f.readline())
_, status = os.waitpid(pid, 0)
child["status"] = os.waitstatus_to_exitcode(status)
child["parent_kernel_alive"] = km.is_alive()
child["parent_after"] = kc.run_cell("3 + 3").result()
kc.stop_channels()
km.shutdown_kernel(now=True)
print(json.dumps(child))
"""

MULTIPROCESSING = """\
import multiprocessing as mp

def target(q):
    faulthandler.dump_traceback_later({deadline}, exit=True)
    q.put({
        "old_client": outcome(lambda: kc.run_cell("1").result()),
        "new": outcome(lambda: _fresh()),
    })

def _fresh():
    with kk.run_kernel(startup_timeout=60) as kc2:
        return kc2.run_cell("5 * 5").result()

ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=target, args=(q,))
p.start()
child = q.get(timeout=120)
p.join(60)
child["status"] = p.exitcode
child["parent_after"] = kc.run_cell("3 + 3").result()
kc.stop_channels()
km.shutdown_kernel(now=True)
print(json.dumps(child))
"""


def run_scenario(tmp_path: Path, isolated_runtime: Path, body: str) -> dict[str, Any]:
    script = tmp_path / "scenario.py"
    script.write_text(
        PRELUDE.format() + textwrap.dedent(body).replace("{deadline}", str(DEADLINE - 20))
    )
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(isolated_runtime))
    try:
        r = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"fork scenario hung: {e.stderr!r}")
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def assert_refused(outcome: str) -> None:
    assert outcome.startswith("KernelError:"), outcome
    assert "before a fork" in outcome


def test_os_fork_child(tmp_path: Path, isolated_runtime: Path) -> None:
    child = run_scenario(tmp_path, isolated_runtime, OS_FORK)
    assert child["status"] == 0
    # Objects made before the fork refuse clearly instead of hanging.
    assert_refused(child["old_client"])
    assert_refused(child["old_manager"])
    # New ones work, on a loop thread of the child's own.
    assert child["new"] == "ok:{'text/plain': '4'}"
    assert child["blocking_client"] == "ok:False"
    # The child's exit did not shut down the parent's kernel.
    assert child["parent_kernel_alive"] is True
    assert child["parent_after"] == {"text/plain": "6"}


def test_multiprocessing_fork_child(tmp_path: Path, isolated_runtime: Path) -> None:
    child = run_scenario(tmp_path, isolated_runtime, MULTIPROCESSING)
    assert child["status"] == 0
    assert_refused(child["old_client"])
    assert child["new"] == "ok:{'text/plain': '25'}"
    assert child["parent_after"] == {"text/plain": "6"}

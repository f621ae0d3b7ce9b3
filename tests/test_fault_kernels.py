"""Self-checks for the fault-injecting kernels in tests/kernels/.

These use jupyter_client (a test-only dependency) rather than kernelkeeper, so
they prove the helper kernels misbehave exactly as documented independently of
the manager under test.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from helpers import kernel_script, wait_for

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups"),
]

READY_TIMEOUT = 30.0


@dataclass
class Launched:
    proc: subprocess.Popen[bytes]
    connection_file: str
    info: dict[str, Any]
    log_path: Path


@dataclass
class Launcher:
    tmp_path: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    clients: list[BlockingKernelClient] = field(default_factory=list)
    extra_pids: list[int] = field(default_factory=list)

    def start(
        self, name: str, env: dict[str, str] | None = None, *, stderr: Any = None
    ) -> Launched:
        n = len(self.procs)
        cf, info = write_connection_file(
            fname=str(self.tmp_path / f"{name}-{n}.json"),
            ip="127.0.0.1",
            key=uuid.uuid4().hex.encode(),
        )
        full_env = dict(os.environ)
        # The kernel exits on its own (ipykernel's parent poller) if pytest dies.
        full_env["JPY_PARENT_PID"] = str(os.getpid())
        full_env.update(env or {})
        log_path = self.tmp_path / f"{name}-{n}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, kernel_script(name), "-f", cf],
                start_new_session=True,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log if stderr is None else stderr,
            )
        self.procs.append(proc)
        return Launched(proc, cf, info, log_path)

    def client(self, kernel: Launched) -> BlockingKernelClient:
        kc = BlockingKernelClient(connection_file=kernel.connection_file)
        kc.load_connection_file()
        self.clients.append(kc)
        # No heartbeat channel: jupyter_client's wait_for_ready() treats a silent
        # heartbeat as a dead kernel; readiness is checked with kernel_info below.
        kc.start_channels(hb=False)
        return kc

    def cleanup(self) -> None:
        for kc in self.clients:
            try:
                kc.stop_channels()
            except Exception:
                pass
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for pid in self.extra_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in self.extra_pids:
            reap_if_adopted(pid, timeout=10)


def reap_if_adopted(pid: int, timeout: float) -> None:
    """Reap ``pid`` if it became our child (conftest makes pytest a subreaper)."""

    def reaped() -> bool:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True  # not (or no longer) our child
        return done != 0

    try:
        wait_for(reaped, timeout)
    except TimeoutError:
        pass


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.cleanup()


# --------------------------------------------------------------------------- helpers


def shell_reply(kc: BlockingKernelClient, msg_id: str, timeout: float) -> dict[str, Any]:
    """The shell reply to ``msg_id``; raises queue.Empty if none within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def control_request(kc: BlockingKernelClient, msg_type: str, content: dict[str, Any]) -> str:
    msg = kc.session.msg(msg_type, content)
    kc.control_channel.send(msg)
    return msg["header"]["msg_id"]


def control_reply(kc: BlockingKernelClient, msg_id: str, timeout: float) -> dict[str, Any]:
    """The control reply to ``msg_id``; raises queue.Empty if none within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_control_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def wait_iopub(
    kc: BlockingKernelClient, pred: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.0, deadline - time.monotonic()))
        if pred(msg):
            return msg


def wait_ready(kc: BlockingKernelClient, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    """Wait for a kernel_info_reply *and* for IOPub to be connected.

    A reply on shell says nothing about the IOPub subscription (zmq slow
    joiner): a status message published before it is in place is lost. So
    repeat kernel_info until the busy/idle status it causes arrives on IOPub.
    """
    deadline = time.monotonic() + timeout
    while True:
        msg_id = kc.kernel_info()
        reply = shell_reply(kc, msg_id, max(0.0, deadline - time.monotonic()))
        assert reply["msg_type"] == "kernel_info_reply"
        try:
            wait_iopub(
                kc,
                lambda m, msg_id=msg_id: (
                    m["msg_type"] == "status" and m["parent_header"].get("msg_id") == msg_id
                ),
                timeout=min(1.0, max(0.0, deadline - time.monotonic())),
            )
        except queue.Empty:
            if time.monotonic() >= deadline:
                raise
            continue
        return reply


def assert_no_reply(get_reply: Callable[[], dict[str, Any]]) -> None:
    with pytest.raises(queue.Empty):
        get_reply()


def assert_running(proc: subprocess.Popen[bytes]) -> None:
    assert proc.poll() is None, f"kernel exited with {proc.returncode}"


def hb_echoes(kernel: Launched, timeout: float) -> bool:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(f"tcp://127.0.0.1:{kernel.info['hb_port']}")
        sock.send(b"ping")
        if sock.poll(int(timeout * 1000)):
            return sock.recv() == b"ping"
        return False
    finally:
        sock.close()


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --------------------------------------------------------------------------- slow_start


def test_slow_start_answers_only_after_the_delay(launcher: Launcher) -> None:
    t0 = time.monotonic()
    kernel = launcher.start("slow_start")  # default delay: 2.0 s
    kc = launcher.client(kernel)
    msg_id = kc.kernel_info()  # queued by zmq until the kernel binds
    assert_no_reply(lambda: shell_reply(kc, msg_id, timeout=1.0))
    assert_running(kernel.proc)
    reply = shell_reply(kc, msg_id, timeout=READY_TIMEOUT)
    assert reply["msg_type"] == "kernel_info_reply"
    assert time.monotonic() - t0 >= 2.0


def test_slow_start_without_delay_is_a_normal_kernel(launcher: Launcher) -> None:
    """Baseline for the other checks: heartbeat echoes, shutdown replies and exits."""
    kernel = launcher.start("slow_start", {"KK_TEST_START_DELAY": "0"})
    kc = launcher.client(kernel)
    wait_ready(kc)
    assert hb_echoes(kernel, timeout=10)
    msg_id = control_request(kc, "shutdown_request", {"restart": False})
    reply = control_reply(kc, msg_id, timeout=10)
    assert reply["msg_type"] == "shutdown_reply"
    assert reply["content"]["status"] == "ok"
    assert kernel.proc.wait(timeout=10) == 0


# --------------------------------------------------------------------------- exit_on_start


def test_exit_on_start_default(launcher: Launcher) -> None:
    kernel = launcher.start("exit_on_start", stderr=subprocess.PIPE)
    _, err = kernel.proc.communicate(timeout=30)
    assert kernel.proc.returncode == 3
    lines = err.decode().splitlines()
    assert len(lines) >= 3
    assert lines[-1] == "exit_on_start: simulated failure (code 3)"


def test_exit_on_start_after_delay_with_code(launcher: Launcher) -> None:
    t0 = time.monotonic()
    kernel = launcher.start(
        "exit_on_start",
        {"KK_TEST_EXIT_AFTER": "0.5", "KK_TEST_EXIT_CODE": "7"},
        stderr=subprocess.PIPE,
    )
    _, err = kernel.proc.communicate(timeout=30)
    assert time.monotonic() - t0 >= 0.5
    assert kernel.proc.returncode == 7
    assert "exit_on_start: simulated failure (code 7)" in err.decode()


# --------------------------------------------------------------------------- shutdown


def test_no_shutdown_reply_ignores_shutdown_on_control_and_shell(launcher: Launcher) -> None:
    kernel = launcher.start("no_shutdown_reply")
    kc = launcher.client(kernel)
    wait_ready(kc)

    msg_id = control_request(kc, "shutdown_request", {"restart": False})
    assert_no_reply(lambda: control_reply(kc, msg_id, timeout=2.0))
    assert_running(kernel.proc)

    shell_msg = kc.session.msg("shutdown_request", {"restart": False})
    kc.shell_channel.send(shell_msg)
    assert_no_reply(lambda: shell_reply(kc, shell_msg["header"]["msg_id"], timeout=2.0))
    assert_running(kernel.proc)

    wait_ready(kc, timeout=10)  # still serving requests
    # SIGTERM is not ignored unless KK_TEST_IGNORE_SIGTERM=1
    os.kill(kernel.proc.pid, signal.SIGTERM)
    assert kernel.proc.wait(timeout=10) == -signal.SIGTERM


def test_no_shutdown_reply_can_ignore_sigterm(launcher: Launcher) -> None:
    kernel = launcher.start("no_shutdown_reply", {"KK_TEST_IGNORE_SIGTERM": "1"})
    kc = launcher.client(kernel)
    wait_ready(kc)
    msg_id = control_request(kc, "shutdown_request", {"restart": False})
    assert_no_reply(lambda: control_reply(kc, msg_id, timeout=2.0))
    os.kill(kernel.proc.pid, signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        kernel.proc.wait(timeout=1.5)
    wait_ready(kc, timeout=10)
    os.killpg(kernel.proc.pid, signal.SIGKILL)
    assert kernel.proc.wait(timeout=10) == -signal.SIGKILL


def test_ignore_term_needs_sigkill(launcher: Launcher) -> None:
    kernel = launcher.start("ignore_term")
    kc = launcher.client(kernel)
    wait_ready(kc)

    msg_id = control_request(kc, "shutdown_request", {"restart": False})
    assert_no_reply(lambda: control_reply(kc, msg_id, timeout=2.0))
    assert_running(kernel.proc)

    os.killpg(kernel.proc.pid, signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        kernel.proc.wait(timeout=1.5)
    assert_running(kernel.proc)

    os.killpg(kernel.proc.pid, signal.SIGKILL)
    assert kernel.proc.wait(timeout=10) == -signal.SIGKILL


# --------------------------------------------------------------------------- SIGINT


def start_sleep_cell(kc: BlockingKernelClient) -> str:
    msg_id = kc.execute("import time; time.sleep(30)")
    wait_iopub(
        kc,
        lambda m: m["msg_type"] == "execute_input" and m["parent_header"].get("msg_id") == msg_id,
        timeout=READY_TIMEOUT,
    )
    return msg_id


def test_ignore_sigint_signal_does_not_interrupt_but_message_does(launcher: Launcher) -> None:
    kernel = launcher.start("ignore_sigint")
    kc = launcher.client(kernel)
    wait_ready(kc)
    exec_id = start_sleep_cell(kc)

    os.kill(kernel.proc.pid, signal.SIGINT)
    assert_no_reply(lambda: shell_reply(kc, exec_id, timeout=1.5))
    assert_running(kernel.proc)

    int_id = control_request(kc, "interrupt_request", {})
    assert control_reply(kc, int_id, timeout=10)["content"]["status"] == "ok"
    reply = shell_reply(kc, exec_id, timeout=10)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"

    # idle SIGINT is ignored too, and the kernel keeps working
    os.kill(kernel.proc.pid, signal.SIGINT)
    wait_ready(kc, timeout=10)
    assert_running(kernel.proc)


def test_ignore_sigint_can_ignore_message_interrupts(launcher: Launcher) -> None:
    kernel = launcher.start("ignore_sigint", {"KK_TEST_IGNORE_MESSAGE_INTERRUPT": "1"})
    kc = launcher.client(kernel)
    wait_ready(kc)
    exec_id = start_sleep_cell(kc)

    int_id = control_request(kc, "interrupt_request", {})
    assert control_reply(kc, int_id, timeout=10)["content"]["status"] == "ok"
    assert_no_reply(lambda: shell_reply(kc, exec_id, timeout=1.5))
    assert_running(kernel.proc)


# --------------------------------------------------------------------------- heartbeat


def test_no_heartbeat_never_echoes(launcher: Launcher) -> None:
    kernel = launcher.start("no_heartbeat")
    kc = launcher.client(kernel)
    wait_ready(kc)
    assert not hb_echoes(kernel, timeout=1.5)
    # everything else works
    exec_id = kc.execute("1 + 1")
    assert shell_reply(kc, exec_id, timeout=10)["content"]["status"] == "ok"
    assert_running(kernel.proc)


# --------------------------------------------------------------------------- children


@pytest.mark.parametrize("count", [None, 3])
def test_spawn_children_leaves_children_in_the_group(
    launcher: Launcher, tmp_path: Path, count: int | None
) -> None:
    pids_file = tmp_path / "children.json"
    env = {"KK_TEST_CHILDREN_FILE": str(pids_file)}
    if count is not None:
        env["KK_TEST_CHILDREN"] = str(count)
    kernel = launcher.start("spawn_children", env)
    wait_for(pids_file.exists, timeout=READY_TIMEOUT)
    pids = json.loads(pids_file.read_text())
    launcher.extra_pids.extend(pids)

    assert len(pids) == (2 if count is None else count)
    kernel_pgid = os.getpgid(kernel.proc.pid)
    assert kernel_pgid == kernel.proc.pid  # start_new_session=True
    for pid in pids:
        assert is_alive(pid)
        assert os.getpgid(pid) == kernel_pgid
        assert psutil.Process(pid).ppid() == kernel.proc.pid

    # A normal shutdown does not take the children down with the kernel.
    kc = launcher.client(kernel)
    wait_ready(kc)
    msg_id = control_request(kc, "shutdown_request", {"restart": False})
    assert control_reply(kc, msg_id, timeout=10)["content"]["status"] == "ok"
    assert kernel.proc.wait(timeout=10) == 0
    for pid in pids:
        assert is_alive(pid)
        assert os.getpgid(pid) == kernel_pgid

    # ... only killing the process group does.
    os.killpg(kernel_pgid, signal.SIGKILL)
    wait_for(lambda: not any(is_alive(pid) for pid in pids), timeout=10)


# --------------------------------------------------------------------------- import safety

IMPORT_CHECK = """
import importlib.util, json, pathlib, sys
names = sorted(p.stem for p in pathlib.Path(sys.argv[1]).glob("*.py") if p.stem != "_common")
for name in names:
    spec = importlib.util.spec_from_file_location(f"kk_fault_{name}", f"{sys.argv[1]}/{name}.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
heavy = sorted(m for m in ("zmq", "ipykernel", "IPython", "_common") if m in sys.modules)
print(json.dumps({"names": names, "heavy": heavy}))
"""


def test_scripts_are_import_safe(tmp_path: Path) -> None:
    """Importing a script runs nothing: no sleep, no children, no kernel, no zmq."""
    kernels_dir = os.path.dirname(kernel_script("slow_start"))
    env = dict(
        os.environ,
        KK_TEST_START_DELAY="30",
        KK_TEST_EXIT_AFTER="30",
        KK_TEST_CHILDREN_FILE=str(tmp_path / "children.json"),
    )
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, kernels_dir],
        env=env,
        capture_output=True,
        check=True,
        timeout=20,
    )
    result = json.loads(out.stdout)
    assert set(result["names"]) >= {
        "exit_on_start",
        "ignore_sigint",
        "ignore_term",
        "no_heartbeat",
        "no_shutdown_reply",
        "slow_start",
        "spawn_children",
    }
    assert result["heavy"] == []
    assert not (tmp_path / "children.json").exists()

"""launch_kernel under faults: forked managers, taken ports, stray signals, dead managers.

* A child forked from the manager must not keep the manager's kernels alive
  once the manager is SIGKILLed (it closes its copies of the watch pipe).
* A kernel on pre-assigned ports that exits because a port was taken is
  started again on fresh ports.
* The guard of a non-ipykernel kernel survives every signal sent to the group.
* The ipykernel watchdog removes the kernel's ipc sockets when the manager dies.
* After a graceful shutdown, data written to a file the kernel never closed is
  on disk, as with a normal interpreter exit.
* CurveZMQ: ``transport_encryption`` puts a keypair in the connection file, and
  jupyter_client's own client talks to the encrypted kernel.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

import kernelkeeper
from helpers import is_dead, wait_for, wait_gone
from kernelkeeper import (
    AsyncKernelManager,
    ConfigurationError,
    KernelDiedError,
    KernelSpec,
    launch_kernel,
)
from kernelkeeper import curve as kk_curve

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, /proc"),
    pytest.mark.timeout(180),
]

READY = 60.0
REPLY = 30.0


def runtime_files(runtime: Path) -> list[str]:
    return sorted(p.name for p in runtime.rglob("kernel-*"))


def group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and not is_dead(p):
                out.append(p)
        except (OSError, psutil.Error):
            pass
    return out


@contextmanager
def manager_script(source: str, args: list[str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Run ``source`` as a manager process; yield the JSON line it prints, then SIGKILL it."""
    script = tmp_path / "manager.py"
    script.write_text(textwrap.dedent(source))
    manager = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=os.environ.copy(),  # this test's JUPYTER_RUNTIME_DIR and JUPYTER_PATH
    )
    try:
        assert manager.stdout is not None
        line = manager.stdout.readline()
        assert line, f"manager script died (exit code {manager.wait(timeout=30)})"
        yield json.loads(line)
    finally:
        manager.kill()
        manager.wait(timeout=30)
        for stream in (manager.stdin, manager.stdout):
            if stream is not None:
                stream.close()
    assert manager.returncode == -signal.SIGKILL


def wait_removed(paths: list[str], timeout: float = 10.0) -> None:
    wait_for(lambda: not any(os.path.exists(p) for p in paths), timeout)


# -- 1. fork safety of the watch pipe -------------------------------------------------

FORKING_MANAGER = """
    import json, multiprocessing, os, signal, sys, time
    import kernelkeeper

    km1, kc1 = kernelkeeper.start_new_kernel(startup_timeout=60)
    km2, kc2 = kernelkeeper.start_new_kernel(startup_timeout=60, kernel_name=sys.argv[1])
    pid = os.fork()
    if pid == 0:
        while True:  # the forked child just waits, until the test kills it
            signal.pause()
    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(3600,))
    worker.start()
    print(json.dumps({
        "kernels": [km1.process.pid, km2.process.pid],
        "ipykernel": [km1.ipykernel, km2.ipykernel],
        "files": [km1.connection_file, km2.connection_file],
        "forked": [pid, worker.pid],
    }), flush=True)
    sys.stdin.read()
"""


def test_forked_children_do_not_keep_kernels_alive(
    kernel_dir: Callable[..., str], tmp_path: Path, isolated_runtime: Path
) -> None:
    name = kernel_dir("ignore_signals")  # not ipykernel_launcher: the guard path
    with manager_script(FORKING_MANAGER, [name], tmp_path) as info:
        assert info["ipykernel"] == [True, False]
        kernels = [psutil.Process(pid) for pid in info["kernels"]]
        forked = [psutil.Process(pid) for pid in info["forked"]]
    try:
        wait_gone(kernels, timeout=10)
        wait_removed(info["files"])
        assert not any(is_dead(p) for p in forked), "the forked children must live on"
    finally:
        for p in forked:
            p.kill()
        wait_gone(forked, timeout=10, reap=True)


# -- 3. pre-assigned ports that turn out to be taken ----------------------------------


async def test_port_taken_at_start_is_retried(
    kernel_dir: Callable[..., str], tmp_path: Path, isolated_runtime: Path
) -> None:
    counter = tmp_path / "starts"
    name = kernel_dir(
        "port_taken",
        env={"KK_TEST_PORT_TAKEN_COUNTER": str(counter), "KK_TEST_PORT_TAKEN_TIMES": "2"},
    )
    km, kc = await kernelkeeper.async_start_new_kernel(startup_timeout=READY, kernel_name=name)
    try:
        assert counter.read_text() == "3"  # two starts failed, the third bound
        res = await kc.run_cell("print('bound')", timeout=REPLY)
        assert res.stdout == "bound\n"
    finally:
        await kc.aclose()
        await km.shutdown_kernel()
    assert runtime_files(isolated_runtime) == []


async def test_port_held_by_another_process(
    kernel_dir: Callable[..., str], tmp_path: Path, isolated_runtime: Path
) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        counter = tmp_path / "starts"
        name = kernel_dir(
            "port_taken",
            env={"KK_TEST_PORT_TAKEN_COUNTER": str(counter), "KK_TEST_TAKEN_PORT": str(port)},
        )
        km, kc = await kernelkeeper.async_start_new_kernel(startup_timeout=READY, kernel_name=name)
        try:
            assert counter.read_text() == "2"
            assert port not in km.connection_info.ports.values()
            res = await kc.run_cell("print('bound')", timeout=REPLY)
            assert res.stdout == "bound\n"
        finally:
            await kc.aclose()
            await km.shutdown_kernel()
    assert runtime_files(isolated_runtime) == []


async def test_heartbeat_port_taken_is_retried(
    kernel_dir: Callable[..., str], isolated_runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ipykernel does not exit when its heartbeat port is taken: the heartbeat
    # thread ends and the kernel runs on. The start sees four ports listening in
    # the kernel and the fifth held by another process, and starts it again.
    from kernelkeeper import connection as kk_connection

    real = kk_connection.allocate_ports
    calls: list[list[int]] = []
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]

        def allocate(ip: str = "127.0.0.1", count: int = 5) -> list[int]:
            ports = real(ip, count)
            if not calls:
                ports[-1] = port  # the heartbeat's: CHANNELS ends with hb
            calls.append(ports)
            return ports

        monkeypatch.setattr(kk_connection, "allocate_ports", allocate)
        name = kernel_dir("slow_start", env={"KK_TEST_START_DELAY": "0"})
        km, kc = await kernelkeeper.async_start_new_kernel(startup_timeout=READY, kernel_name=name)
        try:
            assert not km.ipykernel  # the pre-assigned path
            assert len(calls) == 2 and calls[0][-1] == port
            assert km.connection_info is not None
            assert km.connection_info.hb_port != port
            res = await kc.run_cell("print('bound')", timeout=REPLY)
            assert res.stdout == "bound\n"
        finally:
            await kc.aclose()
            await km.shutdown_kernel()
    assert runtime_files(isolated_runtime) == []


async def test_port_taken_every_time_gives_up(
    kernel_dir: Callable[..., str], tmp_path: Path, isolated_runtime: Path
) -> None:
    counter = tmp_path / "starts"
    name = kernel_dir(
        "port_taken",
        env={"KK_TEST_PORT_TAKEN_COUNTER": str(counter), "KK_TEST_PORT_TAKEN_TIMES": "99"},
    )
    km = AsyncKernelManager(name)
    with pytest.raises(KernelDiedError) as err:
        await km.start_kernel(startup_timeout=READY)
    assert "Address already in use" in err.value.stderr_tail
    assert counter.read_text() == "3"  # three tries, no more
    assert not km.has_kernel
    assert runtime_files(isolated_runtime) == []


async def test_preassigned_launch_waits_until_bound(
    kernel_dir: Callable[..., str], isolated_runtime: Path
) -> None:
    """launch_kernel returns once the guarded kernel listens on all five ports."""
    kernel_dir("slow_start", env={"KK_TEST_START_DELAY": "0.5"})
    spec = kernelkeeper.get_kernel_spec("slow-start")
    info, km = await launch_kernel(spec, startup_timeout=READY)
    try:
        listening = {
            c.laddr.port
            for c in psutil.Process(km.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        }
        assert set(info.ports.values()) <= listening
    finally:
        await km.kill()
        await km.cleanup()


# -- 4. the guard ignores every signal the manager may send to the group ---------------

STRAY = [signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT, signal.SIGALRM, signal.SIGHUP]
STRAY += [signal.SIGPIPE, signal.SIGVTALRM, signal.SIGPROF, signal.SIGWINCH, signal.SIGTERM]
STRAY_NAMES = ",".join(s.name for s in STRAY)


def guard_of(kernel_pid: int) -> psutil.Process:
    others = [p for p in group_members(kernel_pid) if p.pid != kernel_pid]
    assert len(others) == 1, others
    return others[0]


async def test_guard_survives_group_signals(
    kernel_dir: Callable[..., str], isolated_runtime: Path
) -> None:
    name = kernel_dir("ignore_signals", env={"KK_TEST_IGNORE_SIGNALS": STRAY_NAMES})
    km, kc = await kernelkeeper.async_start_new_kernel(startup_timeout=READY, kernel_name=name)
    try:
        guard = guard_of(km.process.pid)
        for s in STRAY:
            await km.signal_kernel(s)
        # The kernel ignored them all and still answers; so does the guard live.
        res = await kc.run_cell("print('alive')", timeout=REPLY)
        assert res.stdout == "alive\n"
        assert not is_dead(guard)
    finally:
        await kc.aclose()
        await km.shutdown_kernel()
    wait_gone([guard], timeout=10, reap=True)
    assert runtime_files(isolated_runtime) == []


async def test_guard_goes_with_a_kernel_killed_by_a_signal(
    kernel_dir: Callable[..., str], isolated_runtime: Path
) -> None:
    name = kernel_dir("ignore_signals", env={"KK_TEST_IGNORE_SIGNALS": ""})
    km, kc = await kernelkeeper.async_start_new_kernel(startup_timeout=READY, kernel_name=name)
    try:
        kernel = psutil.Process(km.process.pid)
        guard = guard_of(kernel.pid)
        await km.signal_kernel(signal.SIGUSR1)  # default action: terminate
        await asyncio.to_thread(wait_gone, [kernel, guard], 10)
        deadline = time.monotonic() + 10
        while await km.is_alive():  # the manager follows the exit through its pidfd
            assert time.monotonic() < deadline, "the manager never saw the kernel exit"
            await asyncio.sleep(0.02)
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=True)
    wait_gone([guard], timeout=10, reap=True)
    assert runtime_files(isolated_runtime) == []


SIGNALLING_MANAGER = """
    import json, signal, sys
    import kernelkeeper

    km, kc = kernelkeeper.start_new_kernel(startup_timeout=60, kernel_name=sys.argv[1])
    for name in sys.argv[2].split(","):
        km.signal_kernel(getattr(signal, name))
    res = kc.run_cell("print('alive')", timeout=30)  # delivered: the kernel ignored them
    print(json.dumps({"kernel": km.process.pid, "alive": res.stdout,
                      "files": [km.connection_file]}), flush=True)
    sys.stdin.read()
"""


def test_sigkilled_manager_kills_kernel_after_group_signals(
    kernel_dir: Callable[..., str], tmp_path: Path, isolated_runtime: Path
) -> None:
    name = kernel_dir("ignore_signals", env={"KK_TEST_IGNORE_SIGNALS": STRAY_NAMES})
    with manager_script(SIGNALLING_MANAGER, [name, STRAY_NAMES], tmp_path) as info:
        assert info["alive"] == "alive\n"
        kernel = psutil.Process(info["kernel"])
        guard = guard_of(kernel.pid)
        assert not is_dead(guard)
    wait_gone([kernel, guard], timeout=10, reap=True)
    wait_removed(info["files"])


# -- 5. the ipykernel watchdog removes ipc sockets ------------------------------------

IPC_MANAGER = """
    import json, sys
    import kernelkeeper

    km, kc = kernelkeeper.start_new_kernel(startup_timeout=60, transport="ipc")
    res = kc.run_cell("import os; print(os.getpid())", timeout=30)
    print(json.dumps({"kernel": km.process.pid, "ipykernel": km.ipykernel,
                      "files": [km.connection_file, *km.connection_info.ipc_paths()]}),
          flush=True)
    sys.stdin.read()
"""


def test_sigkilled_manager_ipc_kernel_removes_its_sockets(
    tmp_path: Path, isolated_runtime: Path
) -> None:
    with manager_script(IPC_MANAGER, [], tmp_path) as info:
        assert info["ipykernel"]
        assert len(info["files"]) == 6
        assert all(os.path.exists(f) for f in info["files"])
        kernel = psutil.Process(info["kernel"])
    wait_gone([kernel], timeout=10, reap=True)
    wait_removed(info["files"])
    assert runtime_files(isolated_runtime) == []


# -- 6. fast exit flushes files the kernel left open ----------------------------------


async def test_graceful_shutdown_flushes_unclosed_files(
    tmp_path: Path, isolated_runtime: Path
) -> None:
    text, binary = tmp_path / "text.txt", tmp_path / "data.bin"
    km, kc = await kernelkeeper.async_start_new_kernel(startup_timeout=READY)
    try:
        # Held by a module, not the user namespace: IPython's exit clears that one
        # (freeing, so flushing, what only it referenced), not other modules.
        res = await kc.run_cell(
            "import os\n"
            f"os.kk_f = open({str(text)!r}, 'w'); os.kk_f.write('x' * 1000)\n"
            f"os.kk_g = open({str(binary)!r}, 'wb', buffering=1 << 20)\n"
            "os.kk_g.write(b'y' * 5000)\n"
            "os.kk_h = open(os.kk_f.name)\n",  # read-only, left alone
            timeout=REPLY,
        )
        assert res.status == "ok", res.error
        assert text.read_text() == ""  # still in the kernel's buffers
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=False)
    assert text.read_text() == "x" * 1000
    assert binary.read_bytes() == b"y" * 5000


# -- 7. CurveZMQ ------------------------------------------------------------------------

CURVE_SPEC = {
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "curve",
    "language": "python",
    "metadata": {"supported_encryption": ["curve"]},
}


@pytest.mark.skipif(not kk_curve.available(), reason="libzmq without CurveZMQ")
async def test_required_encryption_with_jupyter_client(isolated_runtime: Path) -> None:
    from jupyter_client.blocking.client import BlockingKernelClient

    spec = KernelSpec.from_dict(CURVE_SPEC, name="curve")
    info, km = await launch_kernel(spec, transport_encryption="required", startup_timeout=READY)
    try:
        cf = km.files_to_cleanup[0]
        on_disk = json.loads(await asyncio.to_thread(Path(cf).read_text))
        assert on_disk["curve_publickey"] and on_disk["curve_secretkey"]
        assert on_disk["curve_publickey"].encode() == info.curve_publickey

        def kernel_info() -> dict[str, Any]:
            kc = BlockingKernelClient(connection_file=cf)
            kc.load_connection_file()
            kc.start_channels()
            try:
                reply: dict[str, Any] = kc.kernel_info(reply=True, timeout=REPLY)
                return reply
            finally:
                kc.stop_channels()

        reply = await asyncio.to_thread(kernel_info)
        assert reply["content"]["status"] == "ok"

        # A restart (connection info passed back) keeps the keypair.
        await km.kill()
        await km.cleanup()
        again, km = await launch_kernel(
            spec,
            connection_file=cf,
            connection_info=info,
            transport_encryption="required",
            startup_timeout=READY,
        )
        assert (again.curve_publickey, again.curve_secretkey) == (
            info.curve_publickey,
            info.curve_secretkey,
        )
        assert (await asyncio.to_thread(kernel_info))["content"]["status"] == "ok"
    finally:
        await km.kill()
        await km.cleanup()
    assert runtime_files(isolated_runtime) == []


async def test_encryption_policies(isolated_runtime: Path) -> None:
    declared = KernelSpec.from_dict(CURVE_SPEC, name="curve")
    plain = KernelSpec.from_dict({**CURVE_SPEC, "metadata": {}}, name="plain")
    with pytest.raises(ConfigurationError, match="supported_encryption"):
        await launch_kernel(plain, transport_encryption="required")
    with pytest.raises(ConfigurationError, match="tcp"):
        await launch_kernel(declared, transport="ipc", transport_encryption="required")
    with pytest.raises(ConfigurationError, match="transport_encryption"):
        await launch_kernel(declared, transport_encryption="sometimes")
    assert runtime_files(isolated_runtime) == []  # nothing was started
    # auto without a declaration: a plain kernel, no keys in its file.
    info, km = await launch_kernel(plain, transport_encryption="auto", startup_timeout=READY)
    try:
        assert not info.encrypted
        on_disk = await asyncio.to_thread(Path(km.files_to_cleanup[0]).read_text)
        assert "curve_publickey" not in json.loads(on_disk)
    finally:
        await km.kill()
        await km.cleanup()
    assert runtime_files(isolated_runtime) == []


# -- the launcher's watch fd may not have survived a wrapper ----------------------------


def test_launcher_ignores_a_watch_fd_that_is_not_our_pipe(tmp_path: Path) -> None:
    from kernelkeeper._ipykernel_launcher import _inherited_watch_fd

    r, w = os.pipe()
    other_r, other_w = os.pipe()
    with open(tmp_path / "plain", "w") as plain:
        try:
            ino = os.fstat(r).st_ino
            closed = os.dup(r)
            os.close(closed)
            assert _inherited_watch_fd("") is None
            assert _inherited_watch_fd(f"{closed}:{ino}") is None  # closed (was EBADF)
            assert _inherited_watch_fd(f"{plain.fileno()}:{ino}") is None  # not a pipe
            assert _inherited_watch_fd(f"{other_r}:{ino}") is None  # another pipe
            assert _inherited_watch_fd("x:y") is None
            assert _inherited_watch_fd(f"{r}:{ino}") == r
        finally:
            for fd in (r, w, other_r, other_w):
                os.close(fd)


def test_restart_whose_old_port_was_taken_comes_back_on_fresh_ports() -> None:
    # A restart reuses the kernel's ports; if another process took one while
    # the kernel was down, the new kernel fails to bind it. It must exit at
    # once (not hang in ipykernel's exit handlers until the start timeout) and
    # be started again on fresh ports; the kernel's own file is rewritten even
    # though someone now listens on one of its old ports.
    km = kernelkeeper.KernelManager()
    km.start_kernel(startup_timeout=READY)
    squatter = socket.socket()
    try:
        assert km.connection_info is not None and km.process is not None
        old = km.connection_info
        os.killpg(km.process.pid, signal.SIGKILL)
        wait_for(lambda: not km.is_alive(), timeout=10)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((old.ip, old.shell_port))  # free now: its kernel is dead
        squatter.listen()
        t0 = time.monotonic()
        km.restart_kernel(now=True)
        assert time.monotonic() - t0 < 15  # the start timeout is 60 s
        assert km.connection_info is not None
        assert km.connection_info.shell_port != old.shell_port
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=READY)
            assert kc.run_cell("6 * 7", timeout=REPLY).result() == {"text/plain": "42"}
        finally:
            kc.stop_channels()
    finally:
        squatter.close()
        km.shutdown_kernel(now=True)

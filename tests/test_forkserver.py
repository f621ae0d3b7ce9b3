"""Kernels forked from a fork-server template keep every promise of a spawned one.

Every test here turns the fork server on (``KERNELKEEPER_FORKSERVER=1``) and
closes this process's templates afterwards (the suite's leak check would
count a template as a leaked process). A forked kernel is recognised by its
parent: the template, where a spawned one's parent is this process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from helpers import KERNELS_DIR, assert_gone, sleep_cell, until_sleeping, wait_for, wait_gone
from kernelkeeper import AsyncKernelClient, AsyncKernelManager, KernelDiedError, forkserver
from kernelkeeper.launch import prepare_fork_server

pytestmark = [
    pytest.mark.skipif(not forkserver.supported(), reason="needs pidfd and SCM_RIGHTS (Linux)"),
    pytest.mark.timeout(240),
]

READY = 90.0  # generous: 2 cores, other suites run at the same time
REPLY = 30.0
TEMPLATE_SRC = Path(forkserver.__file__).with_name("_forkserver_template.py")


@pytest.fixture(autouse=True)
def fork_server_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(forkserver.ENV_VAR, "1")
    forkserver.shutdown_templates(timeout=30)  # each test starts with none
    yield
    forkserver.shutdown_templates(timeout=30)


async def started(
    managers: Callable[..., AsyncKernelManager],
    name: str = "python3",
    prepare: bool = True,
    **kw: Any,
) -> tuple[AsyncKernelManager, AsyncKernelClient]:
    """A kernel, ready; its template is started first (else the first start
    spawns, and starts the template in the background)."""
    km = managers(name)
    if prepare:
        await prepare_fork_server(km.kernel_spec)
    await km.start_kernel(startup_timeout=READY, **kw)
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=READY)
    return km, kc


async def run(kc: AsyncKernelClient, code: str) -> str:
    result = await kc.run_cell(code, timeout=REPLY)
    assert result.status == "ok", result.error
    return str(result.stdout)


def exists(path: str | Path) -> bool:
    return os.path.exists(path)


def same_file(a: str | Path, b: str | Path) -> bool:
    return os.path.samefile(a, b)


def parent_of(pid: int) -> int:
    return psutil.Process(pid).ppid()


def template_pids() -> list[int]:
    return [t["pid"] for t in forkserver.templates()]


async def test_forked_kernel_is_the_templates_child_and_leads_its_own_session(
    managers: Callable[..., AsyncKernelManager], tmp_path: Path
) -> None:
    env = {**os.environ, "KK_TEST_FORKED": "yes"}
    km, kc = await started(managers, cwd=str(tmp_path), env=env)
    try:
        (template,) = template_pids()
        out = await run(
            kc,
            "import os, sys, json\n"
            "print(json.dumps([os.getpid(), os.getppid(), os.getpgid(0), os.getsid(0),"
            " os.getcwd(), os.environ.get('KK_TEST_FORKED'),"
            " sorted(k for k in os.environ if k.startswith('KERNELKEEPER')), sys.path[:3],"
            " os.readlink('/proc/self/fd/0')]))",
        )
        pid, ppid, pgid, sid, cwd, var, kk_vars, path, stdin = json.loads(out)
        assert km.process is not None
        assert pid == km.process.pid  # the manager follows the real kernel
        assert ppid == template != os.getpid()
        assert pgid == sid == pid  # a session and process-group leader
        assert os.getsid(template) == template  # the template is in a session of its own
        assert same_file(cwd, tmp_path)
        assert var == "yes"
        assert kk_vars == [forkserver.ENV_VAR]  # ours (inherited); none of the per-kernel ones
        assert str(TEMPLATE_SRC.parent) not in path
        assert stdin == os.devnull
        # ps shows the kernel's command line, as for a spawned kernel, not the template's.
        cmdline = psutil.Process(pid).cmdline()
        assert cmdline[0] == sys.executable
        assert cmdline[1].endswith("_ipykernel_launcher.py")
        assert km.connection_file in cmdline
        # A second kernel comes from the same template.
        km2, kc2 = await started(managers)
        try:
            assert km2.process is not None
            assert parent_of(km2.process.pid) == template
            assert template_pids() == [template]
        finally:
            await kc2.aclose()
    finally:
        await kc.aclose()


async def test_first_start_spawns_and_starts_the_template(
    managers: Callable[..., AsyncKernelManager],
) -> None:
    km = managers("python3")
    await km.start_kernel(startup_timeout=READY)
    assert km.process is not None
    assert parent_of(km.process.pid) == os.getpid()
    (template,) = template_pids()  # importing meanwhile
    await km.restart_kernel(now=True)  # waits for the template's imports, then forks
    assert km.process is not None
    assert parent_of(km.process.pid) == template


async def test_interrupt_restart_and_shutdown(
    managers: Callable[..., AsyncKernelManager],
) -> None:
    km, kc = await started(managers)
    try:
        (template,) = template_pids()
        assert km.process is not None
        first = km.process.pid
        ports = km.connection_info.ports if km.connection_info else None
        code = sleep_cell(120)
        running = kc.execute(code, reply=True, timeout=REPLY)
        await wait_for_output(kc, "sleeping")
        await until_sleeping(first)  # see helpers.main_thread_sleeping
        await km.interrupt_kernel()
        reply = await running
        assert reply["content"]["ename"] == "KeyboardInterrupt"

        await km.restart_kernel(now=True)
        await kc.wait_for_ready(timeout=READY)
        assert km.process is not None
        second = km.process.pid
        assert second != first
        assert parent_of(second) == template  # restarts are forked too
        assert km.connection_info is not None and km.connection_info.ports == ports
        assert "ok" in await run(kc, "print('ok')")
        kernel = psutil.Process(second)
    finally:
        await kc.aclose()
    await km.shutdown_kernel()
    await assert_gone([kernel], timeout=30)
    assert not exists(km.connection_file)
    assert psutil.Process(template).is_running()  # the template stays for the next start


async def wait_for_output(kc: AsyncKernelClient, text: str) -> None:
    """Until the kernel prints ``text`` (an interrupt before the cell runs would be lost)."""
    deadline = time.monotonic() + REPLY
    while time.monotonic() < deadline:
        msg = await kc.get_iopub_msg(timeout=REPLY)
        if msg["msg_type"] == "stream" and text in msg["content"]["text"]:
            return
    raise TimeoutError(f"the kernel never printed {text!r}")


async def test_death_carries_exit_code_and_stderr_tail(
    managers: Callable[..., AsyncKernelManager],
) -> None:
    km, kc = await started(managers)
    try:
        assert km.process is not None
        assert parent_of(km.process.pid) in template_pids()
        code = (
            "import os, sys; sys.__stderr__.write('kk-forked-boom\\n'); "
            "sys.__stderr__.flush(); os._exit(7)"
        )
        with pytest.raises(KernelDiedError) as info:
            await kc.execute(code, reply=True, timeout=REPLY)
        assert info.value.exit_code == 7
        assert "kk-forked-boom" in (info.value.stderr_tail or "")
    finally:
        await kc.aclose()


async def test_start_failure_carries_exit_code_and_stderr_tail(
    managers: Callable[..., AsyncKernelManager],
) -> None:
    km = managers("python3")
    assert await prepare_fork_server(km.kernel_spec)
    with pytest.raises(KernelDiedError) as info:
        await km.start_kernel(startup_timeout=READY, extra_arguments=["--no-such-flag"])
    assert info.value.exit_code == 2
    assert "unrecognized arguments: --no-such-flag" in (info.value.stderr_tail or "")
    assert template_pids()  # it was forked: the template is up
    assert not exists(km.connection_file)


async def test_outside_sigkill_takes_the_kernels_group(
    managers: Callable[..., AsyncKernelManager],
) -> None:
    km, kc = await started(managers)
    try:
        assert km.process is not None
        pid = km.process.pid
        child = int(
            await run(
                kc,
                "import subprocess, sys\n"
                "_c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
                "print(_c.pid)",
            )
        )
        os.kill(pid, signal.SIGKILL)  # the kernel only, not its group
        with pytest.raises(KernelDiedError) as info:
            await kc.execute("1", reply=True, timeout=REPLY)
        assert info.value.exit_code == -signal.SIGKILL
        # The template killed the rest of the group before it reaped the kernel.
        await assert_gone([psutil.Process(child)], timeout=30, reap=True)
    finally:
        await kc.aclose()


async def test_template_with_a_thread_refuses_to_fork(
    managers: Callable[..., AsyncKernelManager],
    kernel_dir: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"PYTHONPATH": str(KERNELS_DIR / "thread_at_startup")}
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    name = kernel_dir("threaded", name="threaded", env=env, argv=argv)
    with caplog.at_level(logging.WARNING, logger="kernelkeeper.forkserver"):
        km, kc = await started(managers, name)
    try:
        assert km.process is not None
        assert parent_of(km.process.pid) == os.getpid()  # started normally instead
        assert any("refusing to fork" in r.getMessage() for r in caplog.records)
        assert "threads" in caplog.text
        # The kernel itself is fine, and has that thread.
        assert "kk-test-idle" in await run(
            kc, "import threading; print([t.name for t in threading.enumerate()])"
        )
    finally:
        await kc.aclose()


def test_fork_unsafe_reason_sees_threads_zmq_and_event_loops() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys, threading
        sys.path.insert(0, sys.argv[1])
        from _forkserver_template import fork_unsafe_reason
        out = [fork_unsafe_reason()]
        import zmq
        ctx = zmq.Context.instance()
        out.append(fork_unsafe_reason())
        ctx.term()
        zmq.Context._instance = None
        out.append(fork_unsafe_reason())
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        out.append(fork_unsafe_reason())
        asyncio.set_event_loop(None)
        loop.close()
        ev = threading.Event()
        t = threading.Thread(target=ev.wait)
        t.start()
        out.append(fork_unsafe_reason())
        ev.set()
        t.join()
        print(out)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(TEMPLATE_SRC.parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    clean, zmq_ctx, clean2, loop, thread = eval(res.stdout)  # our own repr of str/None
    assert clean is None and clean2 is None
    assert "zmq context" in zmq_ctx
    assert "event loop" in loop
    assert "threads" in thread


async def test_dead_template_falls_back_then_is_replaced(
    managers: Callable[..., AsyncKernelManager],
) -> None:
    km1, kc1 = await started(managers)
    try:
        (old,) = template_pids()
        os.kill(old, signal.SIGKILL)
        await asyncio.to_thread(wait_gone, [psutil.Process(old)], 30)
        # This start goes the normal way ...
        km2, kc2 = await started(managers, prepare=False)
        assert km2.process is not None
        assert parent_of(km2.process.pid) == os.getpid()
        # ... and a new template is there for the next one.
        km3, kc3 = await started(managers, prepare=False)
        assert km3.process is not None
        (new,) = template_pids()
        assert new != old
        assert parent_of(km3.process.pid) == new
        # The orphaned kernel of the dead template is still under control.
        assert "still" in await run(kc1, "print('still here')")
        for kc in (kc2, kc3):
            await kc.aclose()
    finally:
        await kc1.aclose()
    assert km1.process is not None
    pid1 = km1.process.pid
    await km1.shutdown_kernel(now=True)
    assert not psutil.pid_exists(pid1) or psutil.Process(pid1).status() == psutil.STATUS_ZOMBIE


async def test_env_read_at_import_bypasses_the_template(
    managers: Callable[..., AsyncKernelManager], tmp_path: Path
) -> None:
    _km1, kc1 = await started(managers)  # brings the template up
    await kc1.aclose()
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    km, kc = await started(managers, env=env)
    try:
        assert km.process is not None
        assert parent_of(km.process.pid) == os.getpid()
        assert str(tmp_path) in await run(kc, "import sys; print(sys.path)")
    finally:
        await kc.aclose()


async def test_switch_off_and_independent_kernels_spawn(
    managers: Callable[..., AsyncKernelManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert forkserver.DEFAULT_ENABLED is True
    monkeypatch.delenv(forkserver.ENV_VAR)
    assert forkserver.enabled() is forkserver.DEFAULT_ENABLED
    assert forkserver.enabled(True) is True
    monkeypatch.setenv(forkserver.ENV_VAR, "0")
    assert forkserver.enabled() is False
    km, kc = await started(managers)
    assert not await prepare_fork_server(km.kernel_spec)
    try:
        assert km.process is not None
        assert parent_of(km.process.pid) == os.getpid()
        assert template_pids() == []
    finally:
        await kc.aclose()


def _make_venv(root: Path) -> Path:
    """A virtual environment of this interpreter that sees our site-packages."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120
    )
    python = root / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    (Path(site) / "kk_test_parent.pth").write_text("\n".join(ours) + "\n")
    return python


async def test_other_interpreter_gets_its_own_template_replaced_on_change(
    managers: Callable[..., AsyncKernelManager],
    kernel_dir: Callable[..., str],
    tmp_path: Path,
) -> None:
    python = _make_venv(tmp_path / "venv")
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    name = kernel_dir("venv", name="venv", argv=argv)
    km, kc = await started(managers, name)
    try:
        (template,) = template_pids()
        assert psutil.Process(template).cmdline()[0] == str(python)
        assert km.process is not None
        assert parent_of(km.process.pid) == template
        assert str(tmp_path / "venv") in await run(kc, "import sys; print(sys.prefix)")
        # A package appears in the venv (what an install does): the next start
        # gets a fresh template.
        site = await run(kc, "import sysconfig; print(sysconfig.get_path('purelib'))")
        (Path(site.strip()) / "kk_new_pkg-1.0.dist-info").mkdir()
        km2, kc2 = await started(managers, name)
        await kc2.aclose()
        (new,) = template_pids()
        assert new != template
        assert km2.process is not None
        assert parent_of(km2.process.pid) == new
    finally:
        await kc.aclose()
    await km.shutdown_kernel()
    # The replaced template leaves once its last kernel has.
    await assert_gone([psutil.Process(template)], timeout=30)


MANAGER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import kernelkeeper
    from kernelkeeper import forkserver
    from kernelkeeper.finder import default_finder
    from kernelkeeper.launch import prepare_fork_server

    assert asyncio.run(prepare_fork_server(default_finder().get_spec("python3")))
    km, kc = kernelkeeper.start_new_kernel(startup_timeout=90, kernel_name="python3")
    res = kc.run_cell(
        "import subprocess, sys\\n"
        "_c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\\n"
        "print(_c.pid)",
        timeout=30,
    )
    print(json.dumps({
        "kernel": km.process.pid,
        "kernel_child": int(res.stdout),
        "templates": [t["pid"] for t in forkserver.templates()],
        "files": [km.connection_file],
    }), flush=True)
    sys.stdin.read()
    """
)


def test_sigkilled_manager_leaves_no_forked_kernel_nor_template(tmp_path: Path) -> None:
    script = tmp_path / "manager.py"
    script.write_text(MANAGER_SCRIPT)
    manager = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=os.environ.copy(),  # the fork server on, and this test's runtime dir
    )
    try:
        assert manager.stdout is not None
        line = manager.stdout.readline()
        assert line, f"manager script died (exit code {manager.wait(timeout=30)})"
        info = json.loads(line)
        (template,) = info["templates"]
        procs = {
            "kernel": psutil.Process(info["kernel"]),
            "kernel_child": psutil.Process(info["kernel_child"]),
            "template": psutil.Process(template),
        }
        assert procs["kernel"].ppid() == template
        assert all(p.is_running() for p in procs.values())
        assert all(os.path.exists(f) for f in info["files"])
    finally:
        manager.kill()
        manager.wait(timeout=30)
        for stream in (manager.stdin, manager.stdout):
            if stream:
                stream.close()
    assert manager.returncode == -signal.SIGKILL
    wait_gone(list(procs.values()), timeout=30, reap=True)
    wait_for(lambda: not any(os.path.exists(f) for f in info["files"]), timeout=30)


async def test_ports_are_reported_before_the_shell_is_made(
    managers: Callable[..., AsyncKernelManager], tmp_path: Path
) -> None:
    # The kernel blocks in initialize()'s last step (exec_lines) until we open
    # the FIFO: start_kernel can only return before that if the launcher
    # reported the ports as soon as they were bound (and the file written).
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    km = managers("python3")
    assert await prepare_fork_server(km.kernel_spec)
    gate = f"--IPKernelApp.exec_lines=open({str(fifo)!r}).read()"
    await km.start_kernel(startup_timeout=READY, extra_arguments=[gate])
    assert km.process is not None
    assert parent_of(km.process.pid) == template_pids()[0]
    info = km.connection_info
    assert info is not None
    with open(km.connection_file, encoding="utf-8") as f:  # noqa: ASYNC230 - a small local file
        on_disk = json.load(f)
    assert on_disk["shell_port"] == info.shell_port != 0
    assert on_disk["hb_port"] == info.hb_port != 0
    kc = km.client()
    kc.start_channels()
    try:
        ready = asyncio.ensure_future(kc.wait_for_ready(timeout=READY))

        def release() -> None:
            fd = os.open(fifo, os.O_WRONLY)  # waits for the kernel to open it
            os.close(fd)

        await asyncio.wait_for(asyncio.to_thread(release), READY)
        await ready  # the request sent while the kernel was initializing is answered
        assert "ok" in await run(kc, "print('ok')")
    finally:
        await kc.aclose()


def test_fast_command_line_matches_traitlets(tmp_path: Path) -> None:
    from ipykernel.kernelapp import IPKernelApp

    from kernelkeeper import _ipykernel_launcher as launcher

    argv = ["-f", str(tmp_path / "kernel-1.json")]
    slow = IPKernelApp()
    slow.parse_command_line(argv)
    fast = IPKernelApp()
    launcher._fast_command_line(fast, argv)
    assert "parse_command_line" in vars(fast)  # the fast path was taken
    fast.parse_command_line(argv)
    assert fast.cli_config == slow.cli_config
    assert fast.extra_args == slow.extra_args == []
    assert fast.connection_file == slow.connection_file == argv[1]
    assert fast.argv == slow.argv
    # Anything else goes through traitlets' parser.
    for other in (["-f", "kernel-1.json"], [*argv, "--debug"], ["--f", argv[1]]):
        app = IPKernelApp()
        launcher._fast_command_line(app, other)
        assert "parse_command_line" not in vars(app)

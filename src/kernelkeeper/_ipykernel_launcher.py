"""Start an ipykernel that binds its own ports and reports them back.

Run as a *script* (``python /path/to/_ipykernel_launcher.py -f conn.json ...``)
by any interpreter that has ipykernel, so it imports nothing from
kernelkeeper. It exists for two reasons:

* Race-free ports. The connection file arrives with port 0 for every
  channel; ipykernel binds each socket to a port the OS picks (so no other
  process can take it between choice and bind), and this script then sends
  the real ports to the manager's registration socket, signed with the
  kernel's key. This is the handshake the Jupyter kernel handshaking
  proposal describes, done in a launcher so unmodified ipykernel can use it.
* No orphans. The manager passes the read end of a pipe whose write end only
  it holds. When the manager process dies, even by SIGKILL, the pipe reaches
  EOF and a watchdog thread here removes the kernel's connection file and ipc
  sockets and kills the kernel's whole process group. A wrapper between the
  manager and this script (``sudo``, a script that closes inherited fds) may
  have closed that fd: then there is no watchdog here (the manager's guard
  process does that job for wrapped kernels).

Both are configured by environment variables that are removed before the
kernel runs user code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import stat
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any


def _watch_parent(fd: int, files: list[str]) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
    # The manager is gone: take the kernel and everything it spawned with it,
    # and the files it can no longer clean up.
    for path in files:
        try:
            os.unlink(path)
        except OSError:
            pass
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    finally:
        os._exit(1)


def _inherited_watch_fd(value: str) -> int | None:
    """The watch pipe's fd from ``"fd:inode"``, or None if it did not survive.

    A wrapper may have closed it (sudo, scripts closing inherited fds), and then
    the number may even belong to another file by now: only the pipe the
    manager passed (same inode) counts.
    """
    fd_text, _, ino_text = value.partition(":")
    try:
        fd = int(fd_text)
        ino = int(ino_text) if ino_text else None
        st = os.fstat(fd)
    except (ValueError, OSError):
        return None
    if not stat.S_ISFIFO(st.st_mode) or (ino is not None and st.st_ino != ino):
        return None
    os.set_inheritable(fd, False)  # user code's subprocesses must not hold it
    return fd


def _register(url: str, token: str, app: object) -> None:
    import zmq

    ports = {
        f"{ch}_port": int(getattr(app, f"{ch}_port"))
        for ch in ("shell", "iopub", "stdin", "control", "hb")
    }
    payload = {"token": token, "pid": os.getpid(), **ports}
    body = json.dumps(payload, sort_keys=True).encode()
    key = app.session.key  # type: ignore[attr-defined]
    sig = hmac.new(key, body, hashlib.sha256).hexdigest().encode() if key else b""
    # The kernel's own context: a second one would start another I/O thread.
    ctx: zmq.Context[zmq.Socket[bytes]] = getattr(app, "context", None) or zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.linger = 2000
    sock.connect(url)
    sock.send_multipart([body, sig])
    sock.close()


def _report_once_bound(app: Any, url: str, token: str, files: list[str]) -> Callable[[], None]:
    """Report the ports as soon as every socket is bound, not after ``initialize()``.

    ``initialize()`` binds the sockets, then the heartbeat's, then writes the
    connection file with the ports: the report follows that write (a reader of
    the file after the start sees the real ports). The rest of ``initialize()``
    (the shell, the kernel object: most of its time) then overlaps with the
    manager connecting its client, whose requests wait in the bound sockets.
    The returned function reports if the hook did not (an ipykernel that binds
    elsewhere); it is idempotent.
    """
    done = False

    def report() -> None:
        nonlocal done
        if done:
            return
        done = True
        if getattr(app, "transport", "tcp") == "ipc":
            files.extend(
                f"{app.ip}-{getattr(app, f'{ch}_port')}"
                for ch in ("shell", "iopub", "stdin", "control", "hb")
            )
        if url:
            _register(url, token, app)

    write = getattr(app, "write_connection_file", None)
    if callable(write):

        def write_then_report(**kw: Any) -> None:
            write(**kw)
            hb_port: int = getattr(app, "hb_port", 0)
            if getattr(app, "heartbeat", None) is not None and hb_port:
                report()

        # On the instance: the class, and so any other app, stays as it is.
        setattr(app, "write_connection_file", write_then_report)  # noqa: B010
    return report


def _fast_command_line(app: Any, argv: list[str]) -> None:
    """Parse the usual ``-f /abs/connection.json`` without building traitlets' parser.

    ``parse_command_line`` builds an argparse parser of every alias and flag of
    every configurable class, ~10 ms, most of what ``initialize()`` spends
    before it binds. For exactly this argv (what kernelspecs pass) the result
    is known: ``IPKernelApp.connection_file`` set, no extra arguments. Any other
    argv, or an app whose ``-f`` means something else, takes the full parser.
    """
    if len(argv) != 2 or argv[0] != "-f" or not os.path.isabs(argv[1]):
        return
    if getattr(app, "aliases", {}).get("f") != "IPKernelApp.connection_file":
        return
    if type(app).__name__ != "IPKernelApp":
        return
    try:
        from traitlets.config import Config
    except ImportError:
        return
    path = argv[1]

    def parse_command_line(argv: list[str] | None = None) -> None:
        app.argv = ["-f", path]
        app.cli_config = Config({"IPKernelApp": {"connection_file": path}})
        app.update_config(app.cli_config)
        app.extra_args = []

    setattr(app, "parse_command_line", parse_command_line)  # noqa: B010


def _connection_file_arg(argv: list[str]) -> list[str]:
    for i, arg in enumerate(argv):
        if arg in ("-f", "--f") and i + 1 < len(argv):
            return [argv[i + 1]]
        if arg.startswith(("-f=", "--f=", "--IPKernelApp.connection_file=")):
            return [arg.split("=", 1)[1]]
    return []


def _block_sigint() -> set[int | signal.Signals] | None:
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _restore_mask(mask: set[int | signal.Signals] | None) -> None:
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    # Running as a script put our package directory first on sys.path. Drop it:
    # IPython's init_path puts the working directory there for user code, as
    # it does under ipykernel_launcher.
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]

    url = os.environ.pop("KERNELKEEPER_REGISTER", "")
    token = os.environ.pop("KERNELKEEPER_TOKEN", "")
    fd = _inherited_watch_fd(os.environ.pop("KERNELKEEPER_WATCH_FD", ""))
    # Files the watchdog removes: the connection file now, the ipc sockets once
    # the kernel has bound them (their names depend on the ports it chose).
    files = _connection_file_arg(sys.argv[1:])
    # SIGINT is for the main thread, where user code runs. The kernel's
    # interrupts (ours by killpg, and ipykernel's own for an interrupt_request)
    # are process-directed, and Linux may hand such a signal to any thread that
    # does not block it: then a main thread in time.sleep() or a blocking read
    # is not woken, and the KeyboardInterrupt waits for the call to end. So
    # every thread started from here on (the watchdog, ipykernel's heartbeat,
    # iopub, control and shell-channel threads, all created in initialize())
    # inherits a mask that blocks SIGINT; the main thread unblocks it below.
    sigint_mask = _block_sigint()
    if fd is not None:
        threading.Thread(
            target=_watch_parent, args=(fd, files), daemon=True, name="kk-watch"
        ).start()

    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    # parent_handle=1 means "managed, do not poll the parent": the watchdog
    # above does that job without a polling thread (and no console banner).
    app.parent_handle = 1
    _fast_command_line(app, sys.argv[1:])
    report = _report_once_bound(app, url, token, files)
    try:
        app.initialize(sys.argv[1:])  # type: ignore[no-untyped-call]
    except BaseException as e:
        # A kernel that cannot start (a port taken on restart, bad arguments)
        # must exit at once: a normal interpreter exit would run ipykernel's
        # atexit handlers, which wait on the half-made sockets and threads for
        # ever, and the manager would only learn of it at its start timeout.
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
        if not isinstance(e, SystemExit):
            traceback.print_exc()
        sys.stderr.flush()
        os._exit(code)
    _restore_mask(sigint_mask)
    report()
    app.start()  # type: ignore[no-untyped-call]
    _let_control_finish(app)
    _fast_exit(_history_files(app))


def _let_control_finish(app: Any, timeout: float = 5.0) -> None:
    """After a shutdown_request, let the control thread finish that request.

    ipykernel's shutdown_request handler stops the control thread's loop and
    the main loop, but the control thread then still flushes stdout and
    publishes 'idle', which waits on the iopub thread. The exit's first
    handler (``IPKernelApp.close``) stops the iopub thread, and a control
    thread caught in that flush waits out its 10 s ``flush_timeout`` while
    ``close`` joins it: now and then the kernel exited 10 s late, after its
    manager had given up and sent SIGTERM. Its loop is already stopping, so
    the join is short.
    """
    kernel = getattr(app, "kernel", None)
    thread = getattr(app, "control_thread", None)
    if getattr(kernel, "_shutdown_message", None) is None or thread is None:
        return
    if thread.is_alive() and thread is not threading.current_thread():
        thread.join(timeout)


def _history_files(app: object) -> list[str]:
    """IPython's history database (and sqlite's side files): open for writing,
    never through a Python file object."""
    shell = getattr(app, "shell", None)
    hist = getattr(getattr(shell, "history_manager", None), "hist_file", None)
    if not hist or str(hist) == ":memory:":
        return []
    return [str(hist) + suffix for suffix in ("", "-journal", "-wal", "-shm")]


def _fast_exit(not_ours: Sequence[str] = ()) -> None:
    """Leave the way the interpreter would, minus its final teardown.

    After a shutdown_request, ~90% of an ipykernel's exit time is the
    interpreter's last garbage collection of the IPython heap. Run what
    matters (join non-daemon threads, atexit handlers such as IPython's
    history writer and ipykernel's cleanup, flush the streams), then exit.
    """
    import atexit

    try:
        threading._shutdown()  # type: ignore[attr-defined]  # what Py_Finalize does first
    except Exception:
        pass
    atexit._run_exitfuncs()
    if _writable_files_open(not_ours):
        _flush_open_files()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    os._exit(0)


def _writable_files_open(not_ours: Sequence[str]) -> bool:
    """Is a regular file open for writing on some fd above 2 (other than ``not_ours``)?

    A cheap test (an fstat per fd) that spares the heap walk of
    :func:`_flush_open_files` (~10-20 ms in a kernel) when no file could hold
    unwritten data. Pipes and sockets are left out: their readers are in the
    kernel's process group, which dies with it, or the data is someone else's.
    """
    try:
        import fcntl

        names = os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd")
    except (ImportError, OSError):
        return True  # cannot tell: look
    skip = set()
    for path in not_ours:
        try:
            st = os.stat(path)
        except OSError:
            continue
        skip.add((st.st_dev, st.st_ino))
    for name in names:
        fd = int(name)
        if fd <= 2:
            continue
        try:
            st = os.fstat(fd)
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:  # the listing's own fd, closed by now
            continue
        if not stat.S_ISREG(st.st_mode) or flags & os.O_ACCMODE == os.O_RDONLY:
            continue
        if (st.st_dev, st.st_ino) not in skip:
            return True
    return False


def _flush_open_files() -> None:
    """Flush every file object still open for writing.

    The interpreter's teardown would close (so flush) each one as it frees
    it; without that, ``f = open(p, "w"); f.write("x")`` in a cell would be
    lost. Text files first: flushing them fills their binary buffers.
    """
    import gc
    import io

    # The C base classes (a plain subtype check; io.IOBase is an ABC, far slower
    # over the whole heap), found through the MRO of the concrete classes.
    base: type = next((c for c in io.FileIO.__mro__ if c.__name__ == "_IOBase"), io.IOBase)
    text_base: type = next(
        (c for c in io.TextIOWrapper.__mro__ if c.__name__ == "_TextIOBase"), io.TextIOBase
    )
    text: list[Any] = []
    binary: list[Any] = []
    # type(), not isinstance(): that could run an object's own __class__ property.
    for obj in gc.get_objects():
        cls = type(obj)
        if issubclass(cls, base):
            (text if issubclass(cls, text_base) else binary).append(obj)
    for f in (*text, *binary):
        try:
            if not f.closed and f.writable():
                f.flush()
        except Exception:
            pass


if __name__ == "__main__":
    main()

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
  EOF and a watchdog thread here kills the kernel's whole process group.

Both are configured by environment variables that are removed before the
kernel runs user code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sys
import threading


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
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.linger = 2000
    sock.connect(url)
    sock.send_multipart([body, sig])
    sock.close()


def _connection_file_arg(argv: list[str]) -> list[str]:
    for i, arg in enumerate(argv):
        if arg in ("-f", "--f") and i + 1 < len(argv):
            return [argv[i + 1]]
        if arg.startswith(("-f=", "--f=", "--IPKernelApp.connection_file=")):
            return [arg.split("=", 1)[1]]
    return []


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    # Running as a script put our package directory first on sys.path. Drop it:
    # IPython's init_path puts the working directory there for user code, as
    # it does under ipykernel_launcher.
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]

    url = os.environ.pop("KERNELKEEPER_REGISTER", "")
    token = os.environ.pop("KERNELKEEPER_TOKEN", "")
    watch_fd = os.environ.pop("KERNELKEEPER_WATCH_FD", "")
    if watch_fd:
        fd = int(watch_fd)
        os.set_inheritable(fd, False)  # user code's subprocesses must not hold it
        files = _connection_file_arg(sys.argv[1:])
        threading.Thread(
            target=_watch_parent, args=(fd, files), daemon=True, name="kk-watch"
        ).start()

    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    # parent_handle=1 means "managed, do not poll the parent": the watchdog
    # above does that job without a polling thread (and no console banner).
    app.parent_handle = 1
    app.initialize(sys.argv[1:])  # type: ignore[no-untyped-call]
    if url:
        _register(url, token, app)
    app.start()  # type: ignore[no-untyped-call]
    _fast_exit()


def _fast_exit() -> None:
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
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    os._exit(0)


if __name__ == "__main__":
    main()

"""Start a kernel on a remote node (a Slurm job, an SSH host) and report its ports.

Shipped to the node as source, next to a copy of ``_ipykernel_launcher.py``,
in a private directory (mode 0700) made for this one start, and run as a
script by the node's interpreter: ``python <dir>/_remote_launcher.py``. It
imports nothing from kernelkeeper (the node need not have it installed).

Its settings, the kernel's key included, arrive as one JSON line on stdin:
through the SSH channel, or a here-document in the Slurm batch script (which
only the job's owner and the cluster's administrators can read). Never in
the environment or on a command line, which other users of a shared node
can see. Then:

* it binds the kernel's sockets on the node (ports chosen by the OS; on a
  restart the previous ports when they are free), on the address through
  which the node reaches the manager, and reports the ports, that address,
  its host name and pid to the manager's registration socket, signed with
  the kernel's key (HMAC-SHA256);
* with ``watch_stdin`` (SSH), it kills its whole process group when stdin
  reaches EOF: the SSH connection is gone, so no one can manage the kernel;
* it removes the private directory as soon as the kernel has read its
  connection file.

An ipykernel runs in this process (as with ``_ipykernel_launcher.py``); any
other kernel runs as a child on ports picked here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


def _read_settings() -> dict[str, Any]:
    # Read up to the first newline only: on SSH, stdin stays open afterwards
    # and its EOF is the signal that the connection is gone.
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 65536)
        if not chunk:
            break
        data += chunk
    settings: dict[str, Any] = json.loads(data)
    return settings


def _route_ip(url: str) -> str:
    """Our address on the route to ``url``'s host: the one the manager can reach."""
    hostport = url.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, int(port)))  # UDP: no packet is sent
            return str(s.getsockname()[0])
    except OSError:
        return "0.0.0.0"


def _ports_free(ip: str, ports: dict[str, int]) -> bool:
    for port in ports.values():
        try:
            with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((ip, port))
        except OSError:
            return False
    return True


def _free_ports(ip: str) -> dict[str, int]:
    """Ports for a kernel that cannot bind port 0 itself (picked here, on its node)."""
    socks = []
    try:
        for _ in CHANNELS:
            s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
            s.bind((ip, 0))
            socks.append(s)
        return {f"{ch}_port": s.getsockname()[1] for ch, s in zip(CHANNELS, socks, strict=True)}
    finally:
        for s in socks:
            s.close()


def _report(
    settings: dict[str, Any], ip: str, ports: dict[str, int], pid: int, curve: bool = False
) -> None:
    import zmq

    payload = {
        "token": settings["token"],
        "curve": curve,
        "pid": pid,
        "pgid": os.getpgid(0),
        "ip": ip,
        "hostname": socket.gethostname(),
        **ports,
    }
    body = json.dumps(payload, sort_keys=True).encode()
    key = settings["key"].encode()
    sig = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.linger = 5000
    sock.connect(settings["register"])
    sock.send_multipart([body, sig])
    sock.close()


def _write_connection_file(
    path: str, settings: dict[str, Any], ip: str, ports: dict[str, int], curve: bool = False
) -> None:
    info: dict[str, Any] = {
        "key": settings["key"],
        "signature_scheme": settings.get("signature_scheme", "hmac-sha256"),
        "transport": "tcp",
        "ip": ip,
        "kernel_name": settings.get("kernel_name", ""),
        **ports,
    }
    if curve:
        info["curve_publickey"] = settings["curve_publickey"]
        info["curve_secretkey"] = settings["curve_secretkey"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)


def _ipykernel_does_curve() -> bool:
    """Does this ipykernel read CurveZMQ keys from its connection file (7.4 and later)?"""
    try:
        import ipykernel
    except ImportError:
        return False
    version = getattr(ipykernel, "version_info", ())
    return tuple(v for v in version[:2] if isinstance(v, int)) >= (7, 4)


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]
    sys.path.insert(0, here)
    import _ipykernel_launcher as base  # the copy next to this file

    del sys.path[0]

    settings = _read_settings()
    if settings.get("new_session"):
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader (sshd made us one)
    os.environ.update(settings.get("env") or {})
    for name in ("KERNELKEEPER_REGISTER", "KERNELKEEPER_TOKEN", "KERNELKEEPER_WATCH_FD"):
        os.environ.pop(name, None)
    if settings.get("cwd"):
        try:
            os.chdir(os.path.expanduser(settings["cwd"]))
        except OSError as e:
            print(f"kernelkeeper: cannot change to {settings['cwd']!r}: {e}", file=sys.stderr)
    ip = settings.get("ip") or _route_ip(settings["register"])
    cf = os.path.join(here, "kernel.json")
    files = [cf]
    if settings.get("watch_stdin"):
        threading.Thread(
            target=base._watch_parent, args=(0, files), daemon=True, name="kk-watch"
        ).start()

    previous = {k: int(v) for k, v in (settings.get("ports") or {}).items()}
    if settings.get("mode") == "argv":
        _run_argv(settings, here, cf, ip, previous)
        return

    ports = previous if previous and _ports_free(ip, previous) else {}
    wanted = {f"{ch}_port": ports.get(f"{ch}_port", 0) for ch in CHANNELS}
    curve = "curve_secretkey" in settings and _ipykernel_does_curve()
    _write_connection_file(cf, settings, ip, wanted, curve)
    sigint_mask = base._block_sigint()
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.parent_handle = 1  # managed: no parent poll, no console banner
    try:
        app.initialize(["-f", cf, *settings.get("argv", [])])  # type: ignore[no-untyped-call]
    except BaseException as e:
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
        if not isinstance(e, SystemExit):
            import traceback

            traceback.print_exc()
        sys.stderr.flush()
        shutil.rmtree(here, ignore_errors=True)
        os._exit(code)
    base._restore_mask(sigint_mask)
    # The kernel has read (and rewritten) its connection file: nothing of this
    # start, the key included, stays on the node's disk.
    shutil.rmtree(here, ignore_errors=True)
    bound = {f"{ch}_port": int(getattr(app, f"{ch}_port")) for ch in CHANNELS}
    _report(settings, ip, bound, os.getpid(), curve)
    app.start()  # type: ignore[no-untyped-call]
    base._fast_exit(base._history_files(app))


def _run_argv(
    settings: dict[str, Any], here: str, cf: str, ip: str, previous: dict[str, int]
) -> None:
    """A kernel that is not an ipykernel: ports picked on this node, kernel as a child."""
    ports = previous if previous and _ports_free(ip, previous) else _free_ports(ip)
    _write_connection_file(cf, settings, ip, ports)
    argv = [a.replace("{connection_file}", cf) for a in settings["argv"]]
    # The child gets the signals sent to the group; this process only waits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    _report(settings, ip, ports, child.pid)
    code = child.wait()
    shutil.rmtree(here, ignore_errors=True)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        # A start that failed before the kernel ran (bad settings, no ipykernel):
        # leave nothing of it, the key included, on the node.
        shutil.rmtree(os.path.dirname(os.path.abspath(__file__)), ignore_errors=True)
        raise

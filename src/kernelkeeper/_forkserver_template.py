"""A fork-server template: a Python process that has imported ipykernel, and forks kernels.

Run as a *script* (``python [options] /path/to/_forkserver_template.py``) by
the interpreter the kernels are meant to run in, so it imports nothing from
kernelkeeper's package: only its sibling ``_ipykernel_launcher.py``, which is
itself standalone. The manager passes it one end of a ``SOCK_SEQPACKET``
socketpair as fd ``KERNELKEEPER_TEMPLATE_FD`` and talks to it like this:

* template → manager, once: a hello (``{"pid", "python", "stamps"}``), sent
  when the imports are done. ``stamps`` are ``[path, mtime_ns, inode, size]``
  of the interpreter, these scripts and the directories on ``sys.path``: if
  any of them changes on disk, the manager replaces this template.
* manager → template, per kernel: ``{"args", "env", "cwd"}`` with three fds
  (a reply socket, the kernel's stdout and its stderr). The template forks;
  the child becomes a session leader, reopens stdio onto those fds, applies
  cwd and env and runs the launcher's ``main()`` (``_ipykernel_launcher``:
  watchdog, ``IPKernelApp.initialize/start``, the port report, the fast
  exit), so a forked kernel keeps every promise of a spawned one. On the
  reply socket the template sends ``{"pid"}`` with a pidfd of the child, or
  ``{"error"}``; when the child exits it kills the rest of the child's
  process group (while the child is still a zombie, so its group id cannot
  have been reused), reaps it and sends ``{"exit": code}``.

The template holds no thread, no zmq context and no event loop, and checks
that before every fork (a forked copy of a thread-holding process inherits
locks held by threads that do not exist in the child). It exits once the
manager's end of the socketpair is closed (the manager closed it, or died)
and it has no child left.
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import sys
from typing import Any

_MAX_MSG = 1 << 20
#: Imports ``IPKernelApp.initialize()`` would otherwise do in every kernel.
_PRELOAD = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
    "IPython.core.interactiveshell",
    "IPython.core.history",
    "IPython.core.completer",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "tornado.platform.asyncio",
    "sqlite3",
    "psutil",
    "tornado.queues",
    "pdb",
    "pydoc",
    "faulthandler",
)


def fork_unsafe_reason() -> str | None:
    """Why forking now would be unsafe (threads, a zmq context, an event loop), or None."""
    import threading

    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = 1
    if threading.active_count() > 1 or tasks > 1:
        names = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        return f"the template has {max(tasks, threading.active_count())} threads ({names})"
    zmq = sys.modules.get("zmq")
    if zmq is not None and getattr(getattr(zmq, "Context", None), "_instance", None) is not None:
        return "the template holds a zmq context"
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        events = asyncio.events
        if events._get_running_loop() is not None:
            return "the template runs an event loop"
        policy = events._event_loop_policy
        local = getattr(policy, "_local", None)
        if getattr(local, "_loop", None) is not None:
            return "the template holds an event loop"
    return None


def _stamp(path: str) -> list[Any] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [path, st.st_mtime_ns, st.st_ino, st.st_size]


def _stamps(here: str) -> list[list[Any]]:
    """What the manager re-checks before each fork: the interpreter, the scripts
    and the directories of the import path. Every top-level package imported
    lives in one of those, and installing, upgrading or removing a package
    adds or removes entries there (its ``.dist-info`` at least)."""
    paths = [sys.executable, here, __file__, os.path.join(here, "_ipykernel_launcher.py")]
    paths += [p for p in sys.path if p and os.path.isdir(p)]
    seen: set[str] = set()
    out = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            stamp = _stamp(p)
            if stamp is not None:
                out.append(stamp)
    return out


class _Template:
    def __init__(self, ctl: socket.socket) -> None:
        self.ctl: socket.socket | None = ctl
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        #: pid -> reply socket of each live child.
        self.children: dict[int, socket.socket] = {}

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        while self.ctl is not None or self.children:
            fds = [self.wake_r] + ([self.ctl] if self.ctl is not None else [])
            ready, _, _ = select.select(fds, [], [])
            if self.wake_r in ready:
                try:
                    while os.read(self.wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            self._reap()
            if self.ctl is not None and self.ctl in ready:
                self._command()
        os._exit(0)

    def _command(self) -> None:
        assert self.ctl is not None
        fds = array.array("i")
        try:
            msg, anc, _flags, _addr = self.ctl.recvmsg(
                _MAX_MSG, socket.CMSG_SPACE(16 * fds.itemsize)
            )
        except (ConnectionError, OSError):
            msg, anc = b"", []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if not msg:  # the manager closed its end, or is gone
            for fd in fds:
                os.close(fd)
            self.ctl.close()
            self.ctl = None
            return
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return
        reply = socket.socket(fileno=fds[0])
        try:
            request = json.loads(msg)
            self._fork(request, reply, fds[1], fds[2])
        except Exception as e:  # a bad request, fork failing: report, keep serving
            _send(reply, {"error": f"{type(e).__name__}: {e}"})
            reply.close()
        finally:
            os.close(fds[1])
            os.close(fds[2])

    def _fork(self, request: dict[str, Any], reply: socket.socket, out: int, err: int) -> None:
        unsafe = fork_unsafe_reason()
        if unsafe is not None:
            _send(reply, {"error": f"refusing to fork: {unsafe}", "unsafe": True})
            reply.close()
            return
        sync_r, sync_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the kernel; measured by the tests through it
            os.close(sync_r)
            try:
                os.setsid()
                os.close(sync_w)  # the template may report us now: we lead our group
                self._become_kernel(request, reply, out, err)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                try:
                    sys.stderr.flush()
                finally:
                    os._exit(1)  # never return into the template's loop
        os.close(sync_w)
        pidfd = os.pidfd_open(pid)  # before any reaping: it names this child for sure
        try:
            while os.read(sync_r, 1):  # EOF once the child has called setsid (or died)
                pass
        finally:
            os.close(sync_r)
        self.children[pid] = reply
        try:
            _send(reply, {"pid": pid}, [pidfd])
        finally:
            os.close(pidfd)

    def _become_kernel(
        self, request: dict[str, Any], reply: socket.socket, out: int, err: int
    ) -> None:
        """In the child: drop the template's state, take the kernel's, run the launcher."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for sock in (self.ctl, reply, *self.children.values()):
            if sock is not None:
                sock.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        cwd = request.get("cwd")
        if cwd is not None:
            os.chdir(cwd)
        os.environ.clear()
        os.environ.update(request["env"])
        import time

        time.tzset()  # TZ is read once, at import
        import _ipykernel_launcher

        sys.argv = [_ipykernel_launcher.__file__, *request["args"]]
        _set_cmdline(request.get("cmdline") or [])
        _ipykernel_launcher.main()

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # not ours to reap any more: status unknown
                code = 255
            else:
                if info is None:
                    continue
                # Still a zombie: its pid, and so its group id, cannot have been reused.
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
            reply = self.children.pop(pid)
            _send(reply, {"exit": code})
            reply.close()


#: Room for a kernel's command line: the manager passes an argument this long.
PAD = 4096


def _set_cmdline(argv: list[str]) -> None:
    """Show the kernel's own command line in ``ps`` and ``/proc/<pid>/cmdline``.

    A forked kernel would otherwise show the template's. The argument area is
    written in place (the template was started with :data:`PAD` bytes of
    room), the way setproctitle(3) does: one string, space-separated, whose
    last byte is not NUL (which is how Linux tells such a title).
    """
    try:
        import ctypes

        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    except (OSError, ValueError, IndexError, ImportError):
        return
    title = " ".join(argv).encode(errors="replace")[: max(0, end - start - 2)]
    area = title + b"\0" * (end - start - len(title) - 1) + b" "
    if end > start and title:
        ctypes.memmove(start, area, len(area))


def _send(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    anc = []
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    try:
        sock.sendmsg([json.dumps(msg).encode()], anc)
    except OSError:
        pass  # the manager let go of this kernel (or died): nobody to tell


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ctl = socket.socket(fileno=int(os.environ.pop("KERNELKEEPER_TEMPLATE_FD")))
    os.set_inheritable(ctl.fileno(), False)
    # Our directory is first on sys.path (we run as a script): it gives us the
    # launcher, and must be gone before any kernel runs user code.
    import _ipykernel_launcher  # noqa: F401

    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]
    for name in _PRELOAD:
        try:
            __import__(name)
        except Exception:  # an optional part missing here is imported (or not) by the kernel
            pass
    import gc

    # What is imported now is shared with every kernel: keep the collector off
    # it, so that the kernels' collections neither walk nor copy those pages.
    gc.collect()
    gc.freeze()
    hello = {"pid": os.getpid(), "python": sys.version, "stamps": _stamps(here)}
    _send(ctl, hello)
    _Template(ctl).serve()


if __name__ == "__main__":
    main()

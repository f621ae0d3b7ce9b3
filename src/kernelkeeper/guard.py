"""No orphans: the watch pipe, the group guard, and PR_SET_PDEATHSIG.

This process holds the only write end of a pipe (for life); every kernel's
process group watches its read end. When this process dies, however it dies,
the pipe reaches EOF and the watcher removes the kernel's files and SIGKILLs
the group. ipykernels watch it from a thread of the launcher
(``_ipykernel_launcher.py``); every other kernel, and every kernel started
through a wrapper that might close inherited fds or clear the environment,
runs under the guard below, which holds the read end itself.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["guard_argv", "pdeathsig_preexec", "watch_fd", "watch_id"]

_watch_fds: tuple[int, int] | None = None


def watch_fd() -> int:
    """Read end of a pipe whose write end only this process holds (for life).

    Both ends are close-on-exec; ``pass_fds`` hands the read end to a kernel.
    """
    global _watch_fds
    if _watch_fds is None:
        _watch_fds = os.pipe()
    return _watch_fds[0]


def watch_id() -> str:
    """``"fd:inode"`` of the read end: lets the launcher tell our pipe from an
    unrelated file that a wrapper left (or opened) under the same fd number."""
    fd = watch_fd()
    return f"{fd}:{os.fstat(fd).st_ino}"


def _close_after_fork() -> None:
    # A forked child (a multiprocessing worker, os.fork()) must not hold the write
    # end: as long as it lives, this process's kernels would outlive this process.
    # It has no use for the read end either. Forgetting them is not enough.
    global _watch_fds
    fds, _watch_fds = _watch_fds, None
    for fd in fds or ():
        try:
            os.close(fd)
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_after_fork)

_libc: Any = None


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL


def pdeathsig_preexec() -> Any:
    """A preexec_fn that has the kernel killed when its parent dies (Linux only)."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        # Imported on the first launch, not with the package (~0.3 MiB resident).
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        if not name:
            return None
        _libc = ctypes.CDLL(name, use_errno=True)
    return _set_pdeathsig


# A guarded kernel is started as ``python -I -S -c _GUARD <kernel argv>``: this forks
# a watcher into the kernel's process group (double fork, so it is not the kernel's
# child: ipykernel-based kernels would wait on it at shutdown), then execs the kernel
# in place, same pid. The watcher ignores every signal it can (a manager signals the
# whole group: SIGINT, SIGTERM, but also whatever signal_kernel() is asked for) and
# blocks on the watch pipe; on EOF it removes the kernel's files and SIGKILLs the
# group: the kernel and everything it spawned. While the kernel lives, the manager
# kills the group (watcher included) when the kernel exits.
#
# Signals stay blocked from before the first fork until the watcher ignores them, so
# a signal sent to the group in between cannot kill the watcher either; the kernel
# gets the mask (and SIGPIPE/SIGXFSZ, which Python ignores) back before its exec.
_GUARD = r"""
import os, signal, sys
fd = int(os.environ.pop("KERNELKEEPER_WATCH_FD"))
files = [f for f in os.environ.pop("KERNELKEEPER_WATCH_FILES", "").split("\n") if f]
sigs = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
pid = os.fork()
if pid == 0:
    if os.fork() == 0:
        for s in sigs - {signal.SIGCHLD}:
            try:
                signal.signal(s, signal.SIG_IGN)
            except (OSError, ValueError, RuntimeError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        null = os.open(os.devnull, os.O_RDWR)
        for i in (0, 1, 2):
            os.dup2(null, i)
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            os._exit(0)
        for f in files:
            try:
                os.unlink(f)
            except OSError:
                pass
        os.killpg(0, signal.SIGKILL)
    os._exit(0)
os.waitpid(pid, 0)
os.close(fd)
for s in ("SIGPIPE", "SIGXFSZ"):
    if hasattr(signal, s):
        signal.signal(getattr(signal, s), signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_SETMASK, old)
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as e:
    sys.stderr.write("kernelkeeper: cannot execute %r: %s\n" % (sys.argv[1], e))
    os._exit(127)
"""


def guard_argv(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | os.PathLike[str] | None
) -> list[str] | None:
    """``argv`` run under the group guard, or None where it cannot be (Windows, or an
    executable that does not exist: Popen then reports that as it always did).

    The caller passes the watch fd and sets ``KERNELKEEPER_WATCH_FD`` (the fd
    number) and ``KERNELKEEPER_WATCH_FILES`` (newline-separated paths).
    """
    if sys.platform == "win32" or not argv:
        return None
    exe = argv[0]
    if os.sep in exe:
        path = os.path.join(os.fspath(cwd), exe) if cwd is not None else exe
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return None
    elif shutil.which(exe, path=env.get("PATH", os.defpath)) is None:
        return None
    return [sys.executable, "-I", "-S", "-c", _GUARD, *argv]

"""Fast starts without a pool: fork Python kernels from a template that has imported ipykernel.

Almost all of an ipykernel's start is the kernel importing itself (ipykernel,
IPython, debugpy: a few hundred ms). A *template* is a process of the
kernel's own interpreter that has done those imports once
(``_forkserver_template.py``); each start then asks it to fork, and the child
only sets itself up (``IPKernelApp.initialize/start``) and reports its ports
over the usual registration handshake.

* **One template per start recipe:** the interpreter (as named, so each
  virtual environment gets its own), its options and the spec's argv and
  env, hashed. It is started on first use, by that interpreter.
* **Every promise of a spawned kernel holds.** The child is a session and
  process-group leader, its stdio are the manager's pipes (stderr tail and
  exit code in errors), it watches the manager's pipe (no orphans), and the
  manager follows it by a pidfd the template opened for it. The template
  kills the rest of a kernel's group before reaping it and reports the exit
  status. The template itself exits when the manager closes its channel or
  dies (even by SIGKILL) and its kernels are gone.
* **When a start does not use the template** (it starts normally instead):
  the switch is off; the platform has no pidfd or ``SCM_RIGHTS``; the kernel
  is ``independent``; its stdout or stderr is ``PIPE``/``STDOUT``; its cwd is
  not a directory; or its environment differs from the template's in a
  variable that is only read at interpreter start-up or import (see
  :data:`IMPORT_ENV_PREFIXES`, :data:`IMPORT_ENV_KEYS`: ``PYTHONPATH`` and the
  other ``PYTHON*`` variables, ``LD_*``, locale, ``HOME``, debugpy's
  settings). Other variables and the cwd are applied in the child. Also when
  the template refuses to fork (it holds a thread, a zmq context or an event
  loop: a ``sitecustomize`` that starts a thread, say), failed to start, or
  died: a dead one is replaced at once, so the next start uses it again.
* **A template whose interpreter, scripts or packages changed on disk** (the
  mtime, inode or size of the interpreter, of our two scripts or of a
  directory on its ``sys.path``: installing, upgrading or removing a package
  changes its site-packages directory) is replaced before the next start. A
  file edited in place inside a package directory (an editable install being
  worked on) is not noticed.
* Forked kernels share the template's hash seed (``PYTHONHASHSEED``); the
  ``random`` module reseeds itself in each child.

Switch: :data:`DEFAULT_ENABLED`, overridden by the environment variable
``KERNELKEEPER_FORKSERVER`` (``1`` on, ``0`` off), overridden per launch by
``launch_kernel(fork_server=...)``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future
from typing import IO, Any

from .forkserver_child import REPLY_TIMEOUT, ForkedProcess, recv_fds_now, recv_with_fds
from .guard import watch_fd, watch_id

__all__ = [
    "DEFAULT_ENABLED",
    "ENV_VAR",
    "IMPORT_ENV_KEYS",
    "IMPORT_ENV_PREFIXES",
    "ForkedProcess",
    "enabled",
    "import_env",
    "prepare",
    "shutdown_templates",
    "spawn",
    "start_templates",
    "supported",
    "templates",
]

log = logging.getLogger("kernelkeeper.forkserver")

#: Whether starts use a template when neither the environment nor the caller says.
DEFAULT_ENABLED = True
#: ``1``: use templates, ``0``: do not (overrides :data:`DEFAULT_ENABLED`).
ENV_VAR = "KERNELKEEPER_FORKSERVER"
#: Environment variables read at interpreter start-up or import: a start whose
#: values differ from its template's cannot be forked from it.
IMPORT_ENV_PREFIXES = ("PYTHON", "LD_", "PYDEVD_", "DEBUGPY_")
IMPORT_ENV_KEYS = frozenset({"HOME", "LANG", "LC_ALL", "LC_CTYPE"})
#: Set per kernel by the launch; never part of a template's environment.
_PER_KERNEL = frozenset(
    {
        "KERNELKEEPER_REGISTER",
        "KERNELKEEPER_TOKEN",
        "KERNELKEEPER_WATCH_FD",
        "KERNELKEEPER_WATCH_FILES",
        "JPY_PARENT_PID",
    }
)
_HERE = os.path.dirname(os.path.abspath(__file__))
_SCRIPT = os.path.join(_HERE, "_forkserver_template.py")
_LAUNCHER = os.path.join(_HERE, "_ipykernel_launcher.py")
#: How long a template may take to import ipykernel (a loaded machine is slow).
HELLO_TIMEOUT = 120.0
#: A recipe whose template failed is not tried again for this long (unless it changed).
RETRY_AFTER = 30.0
_CMDLINE_ROOM = 4096  # _forkserver_template.PAD


class TemplateError(Exception):
    """The template cannot fork this kernel; the start goes the normal way.

    ``lasting``: a new template of the same recipe would fail the same way
    (it refused to fork, or could not start).
    """

    def __init__(self, message: str, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


def supported() -> bool:
    """Can this platform fork kernels from a template (pidfd and fd passing)?"""
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "pidfd_open")
        and hasattr(socket, "SCM_RIGHTS")
        and hasattr(socket, "SOCK_SEQPACKET")
    )


def enabled(override: bool | None = None) -> bool:
    """Is the fork server on: ``override``, else ``$KERNELKEEPER_FORKSERVER``, else the default."""
    if override is not None:
        return override
    value = os.environ.get(ENV_VAR, "").strip()
    if value in ("0", "1"):
        return value == "1"
    return DEFAULT_ENABLED


def import_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of ``env`` a forked kernel cannot change any more."""
    return {
        k: v for k, v in env.items() if k in IMPORT_ENV_KEYS or k.startswith(IMPORT_ENV_PREFIXES)
    }


class _Template:
    """One template process and the manager's end of its channel."""

    def __init__(self, key: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.key = key
        self.argv = list(argv)
        self.env = {k: v for k, v in env.items() if k not in _PER_KERNEL}
        self.env_sig = import_env(self.env)
        self.started = time.monotonic()
        self.hello: Future[dict[str, Any]] = Future()
        self._reading = False
        self._lock = threading.Lock()
        #: Threads waiting for the reply of a fork whose start was cancelled.
        self._abandoning: list[threading.Thread] = []
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.popen = subprocess.Popen(
                # The padding is room for each kernel's own command line.
                [*self.argv, _SCRIPT, " " * _CMDLINE_ROOM],
                env={**self.env, "KERNELKEEPER_TEMPLATE_FD": str(theirs.fileno())},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Its own session: a Ctrl-C at the manager's terminal is not for it.
                start_new_session=True,
                pass_fds=(theirs.fileno(), watch_fd()),
            )
        except BaseException:
            self.ctl.close()
            raise
        finally:
            theirs.close()
        self.ctl.setblocking(False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.ctl.fileno() >= 0 and self.popen.poll() is None

    async def ready(self) -> dict[str, Any]:
        """The template's hello, once it has done its imports (raises TemplateError)."""
        if not self.hello.done():
            with self._lock:
                reader = not self._reading
                self._reading = True
            if not reader:
                return await asyncio.shield(asyncio.wrap_future(self.hello))
            try:
                msg, fds = await recv_with_fds(self.ctl, HELLO_TIMEOUT)
            except BaseException as e:
                self.close(kill=True)  # cancelled, or timed out: of no use to anyone now
                if isinstance(e, asyncio.TimeoutError):
                    raise TemplateError("the template did not finish its imports", True) from e
                raise
            for fd in fds:
                os.close(fd)
            if not msg:
                self.close()
                code = self.popen.wait()
                raise TemplateError(f"the template exited while importing (code {code})", True)
            with contextlib.suppress(Exception):  # closed meanwhile
                self.hello.set_result(json.loads(msg))
        return self.hello.result()

    def changed(self) -> str | None:
        """What changed on disk since the template imported it, or None."""
        for path, mtime, ino, size in self.hello.result().get("stamps", ()):
            try:
                st = os.stat(path)
            except OSError:
                return f"{path} is gone"
            if (st.st_mtime_ns, st.st_ino, st.st_size) != (mtime, ino, size):
                return f"{path} changed"
        return None

    async def fork(
        self, args: Sequence[str], env: Mapping[str, str], cwd: str | None, out: int, err: int
    ) -> ForkedProcess:
        """Fork one kernel (raises TemplateError when the template cannot)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmdline = [*self.argv, _LAUNCHER, *args]  # what a spawned kernel would show
        request = {"args": list(args), "env": dict(env), "cwd": cwd, "cmdline": cmdline}
        body = json.dumps(request).encode()
        fds = array.array("i", [theirs.fileno(), out, err]).tobytes()
        try:
            with self._lock:
                self.ctl.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError as e:
            mine.close()
            raise TemplateError(f"cannot reach the template: {e}") from e
        finally:
            theirs.close()
        mine.setblocking(False)
        seen: list[tuple[bytes, list[int]]] = []
        try:
            msg, got = await recv_with_fds(mine, REPLY_TIMEOUT, seen)
        except asyncio.TimeoutError:
            mine.close()
            self.close(kill=True)
            raise TemplateError("the template did not answer") from None
        except BaseException:
            # Cancelled: the fork may have happened. Its reply was read already
            # (the cancellation came just after), or is still to come: waited for
            # on a thread of its own, not on this loop (seen waiting 5 s and more
            # while the loop was held), and its kernel killed when it does.
            if seen:
                self._abandon(mine, seen[0])
            else:
                self._abandon_later(mine)
            raise
        reply = json.loads(msg) if msg else {"error": "the template died"}
        if "pid" not in reply or len(got) != 1:
            for fd in got:
                os.close(fd)
            mine.close()
            raise TemplateError(str(reply.get("error", reply)), bool(reply.get("unsafe")))
        return ForkedProcess(int(reply["pid"]), got[0], mine)

    def _abandon_later(self, mine: socket.socket) -> None:
        self._abandoning = [t for t in self._abandoning if t.is_alive()]
        t = threading.Thread(
            target=self._abandon, args=(mine,), name="kk-fork-abandon", daemon=True
        )
        self._abandoning.append(t)  # each ends within REPLY_TIMEOUT
        t.start()

    @staticmethod
    def _abandon(mine: socket.socket, received: tuple[bytes, list[int]] | None = None) -> None:
        """Kill the kernel of a fork whose start was cancelled (``received``: its
        reply, if it was read already; else it is waited for, blocking)."""
        if received is None:
            mine.setblocking(True)
            mine.settimeout(REPLY_TIMEOUT)
            try:
                received = recv_fds_now(mine)
            except OSError:
                mine.close()
                return
        msg, fds = received
        reply = json.loads(msg) if msg else {}
        if "pid" in reply and fds:
            ForkedProcess(int(reply["pid"]), fds[0], mine).abandon()
        else:
            for fd in fds:
                os.close(fd)
            mine.close()

    def close(self, kill: bool = False) -> None:
        """Let the template go: it exits once its kernels have (``kill``: at once)."""
        if self.ctl.fileno() >= 0:
            self.ctl.close()
        if kill and self.popen.poll() is None:
            with contextlib.suppress(OSError):
                self.popen.kill()
        if not self.hello.done():
            self.hello.set_exception(TemplateError("the template was closed"))


class _Registry:
    """This process's templates, by recipe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.templates: dict[str, _Template] = {}
        #: recipe -> (when it failed, why): not tried again for RETRY_AFTER seconds.
        self.failed: dict[str, tuple[float, str]] = {}
        self.retired: list[_Template] = []
        #: Recipes a start found no template for: started once that start is done.
        self.wanted: dict[str, tuple[list[str], dict[str, str]]] = {}

    def get(
        self, key: str, argv: Sequence[str], env: Mapping[str, str], create: bool = True
    ) -> tuple[_Template | None, bool]:
        """The recipe's template, started here if there was none (then True; with
        ``create=False`` it is only noted for :meth:`start_wanted`)."""
        with self.lock:
            self._reap_retired()
            failed = self.failed.get(key)
            if failed is not None:
                if time.monotonic() - failed[0] < RETRY_AFTER:
                    return None, False
                del self.failed[key]
            t = self.templates.get(key)
            if t is not None and not t.alive():
                log.warning("Fork-server template %d died; starting a new one", t.pid)
                del self.templates[key]
                self._retire(t)
                t = None
            if t is None:
                if not create:
                    self.wanted[key] = (list(argv), dict(env))
                    return None, True
                return self._start(key, argv, env), True
            return t, False

    def start_wanted(self) -> None:
        with self.lock:
            wanted, self.wanted = self.wanted, {}
            for key, (argv, env) in wanted.items():
                if key not in self.templates:
                    self._start(key, argv, env)

    def _start(self, key: str, argv: Sequence[str], env: Mapping[str, str]) -> _Template | None:
        try:
            t = self.templates[key] = _Template(key, argv, env)
        except OSError as e:  # the interpreter is gone, say: Popen reports it on its own
            self.failed[key] = (time.monotonic(), str(e))
            return None
        return t

    def fail(self, t: _Template, why: str) -> None:
        with self.lock:
            self.failed[t.key] = (time.monotonic(), why)
            if self.templates.get(t.key) is t:
                del self.templates[t.key]
            self._retire(t)

    def replace(self, t: _Template, env: Mapping[str, str] | None = None) -> _Template:
        with self.lock:
            if self.templates.get(t.key) is t:
                self._retire(t)
                self._start(t.key, t.argv, t.env if env is None else env)
            return self.templates.get(t.key) or t

    def _retire(self, t: _Template) -> None:
        t.close()
        self.retired.append(t)

    def _reap_retired(self) -> None:
        self.retired = [t for t in self.retired if t.popen.poll() is None]

    def shutdown(self, timeout: float, keep: Collection[int] = ()) -> None:
        with self.lock:
            every = [t for t in (*self.templates.values(), *self.retired) if t.pid not in keep]
            self.templates = {k: t for k, t in self.templates.items() if t.pid in keep}
            self.retired = [t for t in self.retired if t.pid in keep]
            self.failed.clear()
            self.wanted.clear()
        for t in every:
            t.close()
        deadline = time.monotonic() + timeout
        for t in every:
            try:
                t.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                t.popen.kill()
                t.popen.wait()


_registry = _Registry()


def _forget_after_fork() -> None:
    # A forked copy of this process must not hold the templates' channels: they
    # would outlive this process, and it has no use for them.
    global _registry
    old, _registry = _registry, _Registry()
    for t in [*old.templates.values(), *old.retired]:
        with contextlib.suppress(OSError):
            t.ctl.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def start_templates() -> None:
    """Start the templates that starts found missing (a launch calls this once
    its spawned kernel has bound its ports)."""
    _registry.start_wanted()


async def prepare(key: str, interpreter: Sequence[str], template_env: Mapping[str, str]) -> bool:
    """Start the recipe's template now, if not yet, and wait for its imports.

    For whoever knows kernels will come (a pool, a server at start-up). False:
    no template for this recipe (it failed, or refuses to fork).
    """
    if not supported():
        return False
    t, _new = _registry.get(key, interpreter, template_env)
    if t is None:
        return False
    try:
        await t.ready()
    except TemplateError as e:
        log.warning("Fork-server template %d failed to start: %s", t.pid, e)
        _registry.fail(t, str(e))
        return False
    return True


def templates() -> list[dict[str, Any]]:
    """The running templates: ``{"key", "pid", "argv", "ready"}`` each."""
    with _registry.lock:
        return [
            {"key": t.key, "pid": t.pid, "argv": [*t.argv, _SCRIPT], "ready": t.hello.done()}
            for t in _registry.templates.values()
        ]


def shutdown_templates(timeout: float = 10.0, keep: Collection[int] = ()) -> None:
    """Close every template of this process (but those whose pid is in ``keep``)
    and wait (at most ``timeout`` s) for them to exit; one that does not is
    killed. Kernels forked from them keep running but their exit status is
    then unknown: shut them down first."""
    _registry.shutdown(timeout, keep)


def recipe_key(
    interpreter: Sequence[str],
    spec_argv: Sequence[str],
    spec_env: Mapping[str, str],
    path: str | None,
) -> str:
    """The hash naming a template: interpreter (as named) and options, spec argv and env."""
    exe = interpreter[0]
    if os.sep not in exe:
        exe = shutil.which(exe, path=path) or exe
    data = [os.path.abspath(exe), list(interpreter[1:]), list(spec_argv), sorted(spec_env.items())]
    data.append(watch_id())
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def _stdio_fd(stream: int | IO[Any] | None, default: int) -> int | None:
    """A file descriptor for a kernel's stdout/stderr, or None where only Popen can."""
    if stream is None:
        stream = default
    elif stream == subprocess.DEVNULL:
        return -2  # resolved by the caller
    try:
        fd = stream if isinstance(stream, int) else stream.fileno()
        if fd < 0:
            return None  # PIPE, STDOUT: for Popen only
        os.fstat(fd)  # a closed fd would fail the request, not the template
    except (AttributeError, OSError, ValueError):
        return None
    return fd


async def spawn(
    *,
    key: str,
    interpreter: Sequence[str],
    args: Sequence[str],
    env: Mapping[str, str],
    template_env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None,
    stdout: int | IO[Any] | None,
    stderr: int | IO[Any] | None,
) -> ForkedProcess | None:
    """Fork a kernel ``interpreter + [launcher] + args`` from the recipe ``key``'s
    template; None where it cannot (see the module's notes): start it normally.

    ``env`` is the kernel's environment; ``template_env`` the one a kernel
    started with no ``env`` of its own would get (this process's, plus the
    spec's), which the template runs with.
    """
    if not supported():
        return None
    cwd_s = os.fspath(cwd) if cwd is not None else None
    if cwd_s is not None and not _is_dir(cwd_s):
        return None  # Popen reports that as it always did
    out = _stdio_fd(stdout, 1)
    err = _stdio_fd(stderr, 2)
    if out is None or err is None:
        return None
    if import_env(env) != import_env(template_env):
        log.debug("Start not forked: its environment differs in variables read at import")
        return None
    t, new = _registry.get(key, interpreter, template_env, create=False)
    if t is None or new:
        # Waiting for a new template would make this start slower than a spawn
        # (it imports more than a kernel before it can fork), and so would one
        # importing alongside it. This one spawns; start_templates() then starts
        # the template, and the next starts fork (or wait for its imports).
        return None
    try:
        await t.ready()
        why = t.changed()
        if why is None and import_env(template_env) != t.env_sig:
            why = "this process's environment changed"
        if why is not None:
            log.info("Replacing fork-server template %d: %s", t.pid, why)
            t = _registry.replace(t, template_env)
            await t.ready()
        null = -1
        if out == -2 or err == -2:
            null = os.open(os.devnull, os.O_WRONLY)
        try:
            return await t.fork(
                args, env, cwd_s, null if out == -2 else out, null if err == -2 else err
            )
        finally:
            if null >= 0:
                os.close(null)
    except TemplateError as e:
        log.warning(
            "Fork-server template %d cannot start kernels (%s); starting normally", t.pid, e
        )
        if e.lasting:
            _registry.fail(t, str(e))
        else:
            _registry.replace(t)  # a dead template is started again for the next start
        return None

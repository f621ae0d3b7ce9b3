"""Shared pieces for the fault-injecting test kernels in this directory.

Not a test module and not part of kernelkeeper: the scripts next to this file
import it (after putting their own directory on ``sys.path``) to build real
ipykernel kernels that misbehave in one precise way.

Everything here works with ipykernel 7 (and 6.x where the hooks are the same):

* ``Kernel.shutdown_request`` is an ``async`` handler that serves both the
  control and the shell channel (``Kernel.__init__`` builds both handler tables
  with ``getattr(self, msg_type)``), so overriding it in a subclass covers both.
* ``IPKernelApp.init_heartbeat`` looks the ``Heartbeat`` class up in the
  ``ipykernel.kernelapp`` module namespace at call time, which lets us swap in a
  subclass without copying the method.
* ``Kernel._at_shutdown`` (run after a shutdown_request) SIGTERMs, then SIGKILLs,
  every child in the kernel's own process group via
  ``_progressively_terminate_all_children``.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import zmq
from ipykernel.heartbeat import Heartbeat
from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp


def env_flag(name: str) -> bool:
    """True if the environment variable is set to a truthy value (1/true/yes/on)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def ignore_sigterm() -> None:
    """Make SIGTERM a no-op for this process (only SIGKILL stops it).

    Note: SIG_IGN is inherited across fork/exec, so subprocesses started by code
    running in such a kernel ignore SIGTERM as well.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def launch(
    kernel_class: type[IPythonKernel] | None = None,
    app_class: type[IPKernelApp] = IPKernelApp,
) -> None:
    """Start an ipykernel app (parses ``sys.argv``, e.g. ``-f <connection file>``)."""
    kwargs: dict[str, Any] = {}
    if kernel_class is not None:
        kwargs["kernel_class"] = kernel_class
    app_class.launch_instance(**kwargs)


# --------------------------------------------------------------------------- shutdown


class NoShutdownKernel(IPythonKernel):
    """Swallows shutdown_request on control *and* shell: no reply, no exit."""

    async def shutdown_request(self, stream, ident, parent):
        self.log.warning(
            "fault kernel: ignoring shutdown_request %s (no reply, not exiting)",
            parent.get("header", {}).get("msg_id"),
        )


# --------------------------------------------------------------------------- children


class KeepChildrenKernel(IPythonKernel):
    """Never signals its process-group children on shutdown (stock ipykernel does)."""

    async def _progressively_terminate_all_children(self):
        self.log.warning("fault kernel: leaving process-group children alone on shutdown")


# --------------------------------------------------------------------------- heartbeat


class SilentHeartbeat(Heartbeat):
    """Binds the heartbeat ROUTER socket but never echoes anything.

    Pings are accepted by zmq and queued, so clients connect fine and simply
    never get a pong. The thread blocks on an inproc socket nobody writes to;
    ``IPKernelApp.close`` terminates the heartbeat context at exit, which
    raises ETERM here and lets the thread close its sockets and end.
    """

    def run(self):
        self.name = "Heartbeat"
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        secret = getattr(self, "_curve_secretkey", None)
        if secret is not None:
            self.socket.curve_secretkey = secret
            self.socket.curve_publickey = self._curve_publickey
            self.socket.curve_server = True
        try:
            self._bind_socket()
        except Exception:
            self.socket.close()
            raise
        blocker = self.context.socket(zmq.PAIR)
        blocker.linger = 0
        blocker.bind(f"inproc://kk-silent-heartbeat-{id(self)}")
        try:
            while True:
                try:
                    blocker.recv()
                except zmq.ZMQError as e:
                    if e.errno == errno.EINTR:
                        continue
                    break
        finally:
            blocker.close()
            self.socket.close()


class SilentHeartbeatApp(IPKernelApp):
    """IPKernelApp whose heartbeat thread is a :class:`SilentHeartbeat`."""

    def init_heartbeat(self):
        import ipykernel.kernelapp as kernelapp

        original = kernelapp.Heartbeat
        kernelapp.Heartbeat = SilentHeartbeat  # type: ignore[misc]
        try:
            super().init_heartbeat()
        finally:
            kernelapp.Heartbeat = original  # type: ignore[misc]


# --------------------------------------------------------------------------- SIGINT


class SigintProofKernel(IPythonKernel):
    """A kernel that ignores SIGINT sent from outside.

    Stock ipykernel keeps SIGINT at SIG_IGN while idle (``IPKernelApp.init_signal``)
    and installs ``default_int_handler`` around every shell handler
    (``pre_handler_hook``), or a future-cancelling handler around async cells
    (``IPythonKernel._cancel_on_sigint``). Here every one of those handlers is
    wrapped in a gate that drops the signal unless the kernel itself raised it
    in response to an ``interrupt_request``.

    ipykernel implements ``interrupt_request`` by sending SIGINT to *itself*
    (``Kernel._send_interrupt_children``: ``killpg`` of its own group when it
    leads the group, else ``kill(getpid())``), so a plain ``SIG_IGN`` would
    make message-mode interrupts no-ops too. With the gate, message-mode
    interrupts keep working (only the kernel process is signalled, not its
    group); set ``KK_TEST_IGNORE_MESSAGE_INTERRUPT=1`` to make them no-ops as
    well, which is what plain ``SIG_IGN`` would give.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._interrupt_requested = threading.Event()
        self._message_interrupts = not env_flag("KK_TEST_IGNORE_MESSAGE_INTERRUPT")

    def _gate(self, inner: Any) -> Callable[[int, Any], None]:
        def gated_sigint(signum: int, frame: Any) -> None:
            if not self._interrupt_requested.is_set():
                return  # SIGINT from outside: ignored
            self._interrupt_requested.clear()
            if callable(inner):
                inner(signum, frame)
            elif inner == signal.SIG_DFL:
                raise KeyboardInterrupt

        return gated_sigint

    def pre_handler_hook(self):
        self._interrupt_requested.clear()
        self.saved_sigint_handler = signal.signal(
            signal.SIGINT, self._gate(signal.default_int_handler)
        )

    def post_handler_hook(self):
        signal.signal(signal.SIGINT, self.saved_sigint_handler)
        self._interrupt_requested.clear()

    @contextmanager
    def _cancel_on_sigint(self, future):
        with super()._cancel_on_sigint(future):
            signal.signal(signal.SIGINT, self._gate(signal.getsignal(signal.SIGINT)))
            yield

    def _send_interrupt_children(self):
        if self._message_interrupts:
            self._interrupt_requested.set()
        os.kill(os.getpid(), signal.SIGINT)

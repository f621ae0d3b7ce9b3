"""The blocking facade: the async core run on an event-loop thread the library owns.

Every blocking call submits a coroutine to that loop and waits for its
result, so the same code serves scripts, threads and callers already inside
an asyncio loop (a notebook, say): the caller's own loop is never touched.
No logic lives here beyond the hand-over.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import queue
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from . import loopthread
from .blocking_channels import BlockingChannel, BlockingHBChannel
from .client import AsyncKernelClient, CellResult
from .connection import ConnectionInfo
from .execution import maybe_await
from .loopthread import LoopThread, portal
from .manager import _LAUNCH_KEYS, AsyncKernelManager, KernelEvent
from .session import Message, Session

__all__ = [
    "BlockingKernelClient",
    "KernelManager",
    "LoopThread",
    "run_kernel",
    "start_new_kernel",
]

T = TypeVar("T")

log = logging.getLogger("kernelkeeper.blocking")


def _forget_managers() -> None:
    global _live_managers
    # A forked child does not own its parent's kernels: its exit must not
    # shut them down (see _shutdown_leftovers).
    _live_managers = weakref.WeakSet()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_managers)


async def _awaited(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # Called on the loop thread: the sockets are that thread's alone.
    return await fn(*args, **kwargs)


class BlockingKernelClient:
    """A kernel client with blocking methods (jupyter_client's BlockingKernelClient API).

    Build it from connection info (a :class:`ConnectionInfo`, a dict or a
    connection file path), or get one from ``KernelManager.client()``.
    """

    def __init__(
        self,
        connection_info: ConnectionInfo | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        async_client: AsyncKernelClient | None = None,
        **kwargs: Any,
    ) -> None:
        self._portal = portal()
        if async_client is None:
            if connection_info is None:
                raise TypeError("BlockingKernelClient needs connection_info")
            async_client = self._portal.call(AsyncKernelClient, connection_info, **kwargs)
        self._ac = async_client
        self.shell_channel = BlockingChannel(async_client.shell_channel, self._portal)
        self.iopub_channel = BlockingChannel(async_client.iopub_channel, self._portal)
        self.stdin_channel = BlockingChannel(async_client.stdin_channel, self._portal)
        self.control_channel = BlockingChannel(async_client.control_channel, self._portal)
        self.hb_channel = BlockingHBChannel(async_client.hb_channel, self._portal)

    def __repr__(self) -> str:
        return repr(self._ac).replace("AsyncKernelClient", "BlockingKernelClient")

    @property
    def async_client(self) -> AsyncKernelClient:
        """The async client this one drives (lives on the library's loop)."""
        return self._ac

    @property
    def session(self) -> Session:
        return self._ac.session

    @property
    def connection_info(self) -> ConnectionInfo:
        return self._ac.connection_info

    @property
    def allow_stdin(self) -> bool:
        return self._ac.allow_stdin

    @allow_stdin.setter
    def allow_stdin(self, value: bool) -> None:
        self._ac.allow_stdin = value

    @property
    def kernel_info_reply(self) -> Message | None:
        return self._ac.kernel_info_reply

    @property
    def dropped(self) -> int:
        return self._ac.dropped

    @property
    def channels_running(self) -> bool:
        return self._ac.channels_running

    def start_channels(
        self,
        shell: bool = True,
        iopub: bool = True,
        stdin: bool = True,
        hb: bool = True,
        control: bool = True,
    ) -> None:
        self._portal.call(self._ac.start_channels, shell, iopub, stdin, hb, control)

    def stop_channels(self) -> None:
        self._portal.run(self._ac.aclose())

    def __enter__(self) -> BlockingKernelClient:
        self.start_channels()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_channels()

    def wait_for_ready(self, timeout: float | None = None) -> Message:
        """Block until the kernel is ready; see :meth:`AsyncKernelClient.wait_for_ready`."""
        return self._portal.run(self._ac.wait_for_ready(timeout))

    def execute(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: Mapping[str, str] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> Any:
        return self._portal.run(
            _awaited(
                self._ac.execute,
                code,
                silent,
                store_history,
                user_expressions,
                allow_stdin,
                stop_on_error,
                reply=reply,
                timeout=timeout,
            )
        )

    def kernel_info(self, *, reply: bool = False, timeout: float | None = None) -> Any:
        return self._portal.run(_awaited(self._ac.kernel_info, reply=reply, timeout=timeout))

    def complete(
        self,
        code: str,
        cursor_pos: int | None = None,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> Any:
        return self._portal.run(
            _awaited(self._ac.complete, code, cursor_pos, reply=reply, timeout=timeout)
        )

    def inspect(
        self,
        code: str,
        cursor_pos: int | None = None,
        detail_level: int = 0,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> Any:
        return self._portal.run(
            _awaited(self._ac.inspect, code, cursor_pos, detail_level, reply=reply, timeout=timeout)
        )

    def history(
        self,
        raw: bool = True,
        output: bool = False,
        hist_access_type: str = "range",
        *,
        reply: bool = False,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        return self._portal.run(
            _awaited(
                self._ac.history,
                raw,
                output,
                hist_access_type,
                reply=reply,
                timeout=timeout,
                **kwargs,
            )
        )

    def is_complete(self, code: str, *, reply: bool = False, timeout: float | None = None) -> Any:
        return self._portal.run(_awaited(self._ac.is_complete, code, reply=reply, timeout=timeout))

    def comm_info(
        self, target_name: str | None = None, *, reply: bool = False, timeout: float | None = None
    ) -> Any:
        return self._portal.run(
            _awaited(self._ac.comm_info, target_name, reply=reply, timeout=timeout)
        )

    def shutdown(
        self, restart: bool = False, *, reply: bool = False, timeout: float | None = None
    ) -> Any:
        return self._portal.run(_awaited(self._ac.shutdown, restart, reply=reply, timeout=timeout))

    def interrupt(self, *, reply: bool = False, timeout: float | None = None) -> Any:
        return self._portal.run(self._ac.interrupt(reply=reply, timeout=timeout))

    def input(self, string: str) -> None:
        self._portal.call(self._ac.input, string)

    def get_shell_msg(self, timeout: float | None = None, *, block: bool = True) -> Message:
        """The next unclaimed shell message; :class:`queue.Empty` after ``timeout`` s."""
        return self.shell_channel.get_msg(timeout, block=block)

    def get_iopub_msg(self, timeout: float | None = None, *, block: bool = True) -> Message:
        """The next unclaimed iopub message; :class:`queue.Empty` after ``timeout`` s."""
        return self.iopub_channel.get_msg(timeout, block=block)

    def get_stdin_msg(self, timeout: float | None = None, *, block: bool = True) -> Message:
        """The next unclaimed stdin message; :class:`queue.Empty` after ``timeout`` s."""
        return self.stdin_channel.get_msg(timeout, block=block)

    def get_control_msg(self, timeout: float | None = None, *, block: bool = True) -> Message:
        """The next unclaimed control message; :class:`queue.Empty` after ``timeout`` s."""
        return self.control_channel.get_msg(timeout, block=block)

    def is_alive(self) -> bool:
        return self._portal.run(self._ac.is_alive())

    def execute_interactive(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: Mapping[str, str] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
        timeout: float | None = None,
        output_hook: Callable[[Message], Any] | None = None,
        stdin_hook: Callable[[Message], Any] | None = None,
    ) -> Message:
        """Execute and wait for the reply; see :meth:`AsyncKernelClient.execute_interactive`.

        ``output_hook`` and ``stdin_hook`` run in the calling thread, in
        message order, so a slow hook never stalls the library's loop (and
        the other kernels on it). A ``stdin_hook`` may be a coroutine
        function; its coroutine runs on the loop. Without ``output_hook``
        output goes to this process's stdout/stderr.
        """
        inbox, out, inp = _relays(output_hook, stdin_hook)
        return self._run_relayed(
            inbox,
            self._ac.execute_interactive(
                code,
                silent,
                store_history,
                user_expressions,
                allow_stdin,
                stop_on_error,
                timeout,
                out,
                inp,
            ),
        )

    def run_cell(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_output: Callable[[Message], Any] | None = None,
        stdin_hook: Callable[[Message], Any] | None = None,
        silent: bool = False,
        store_history: bool = True,
        stop_on_error: bool = True,
    ) -> CellResult:
        """Execute ``code`` and collect its outputs; see :meth:`AsyncKernelClient.run_cell`.

        ``on_output`` and ``stdin_hook`` run in the calling thread, in
        message order (see :meth:`execute_interactive`).
        """
        inbox, out, inp = _relays(on_output, stdin_hook)
        return self._run_relayed(
            inbox,
            self._ac.run_cell(
                code,
                timeout=timeout,
                on_output=out,
                stdin_hook=inp,
                silent=silent,
                store_history=store_history,
                stop_on_error=stop_on_error,
            ),
        )

    def _run_relayed(self, inbox: queue.SimpleQueue[Any], coro: Coroutine[Any, Any, T]) -> T:
        # The loop only queues (hook, message) pairs; this thread, which waits
        # anyway, takes them off in order and runs the hooks.
        fut = self._portal.submit(coro)
        # Set on the loop after the last hook message was queued: it comes last.
        fut.add_done_callback(lambda _: inbox.put(_DONE))
        try:
            while True:
                item = inbox.get()
                if item is _DONE:
                    return fut.result()
                hook, msg = item
                try:
                    result = hook(msg)
                    if asyncio.iscoroutine(result):
                        self._portal.run(maybe_await(result))
                except Exception:  # a failing user hook must not end the execution
                    log.exception("Error in a hook handling a %s message", msg.get("msg_type"))
        except BaseException:
            fut.cancel()  # e.g. KeyboardInterrupt: do not leave the execution running
            raise


_DONE = object()


def _relays(
    output_hook: Callable[[Message], Any] | None, stdin_hook: Callable[[Message], Any] | None
) -> tuple[
    queue.SimpleQueue[Any], Callable[[Message], None] | None, Callable[[Message], None] | None
]:
    """A hand-over queue, and hooks for the loop that only put ``(hook, msg)`` on it."""
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def relay(hook: Callable[[Message], Any] | None) -> Callable[[Message], None] | None:
        if hook is None:
            return None
        return lambda msg: inbox.put((hook, msg))

    return inbox, relay(output_hook), relay(stdin_hook)


_live_managers: weakref.WeakSet[KernelManager] = weakref.WeakSet()
_KM = TypeVar("_KM", bound="KernelManager")


class KernelManager:
    """Manages a single kernel in a subprocess on this host (blocking API).

    The same arguments and methods as :class:`AsyncKernelManager`, as plain
    calls. Kernels still running when the interpreter exits are killed and
    their files removed.
    """

    def __init__(self, kernel_name: str = "", **kwargs: Any) -> None:
        self._portal = portal()
        self._akm: AsyncKernelManager = self._portal.call(AsyncKernelManager, kernel_name, **kwargs)
        _live_managers.add(self)

    @classmethod
    def from_async(cls: type[_KM], akm: AsyncKernelManager) -> _KM:
        """The blocking face of an existing ``akm`` (which must live on the library's loop).

        The face does not own the kernel: whoever made ``akm`` (a multi-kernel
        manager, say) shuts it down, so it is not killed at interpreter exit here.
        """
        self = cls.__new__(cls)
        self._portal = portal()
        self._akm = akm
        return self

    def __repr__(self) -> str:
        return repr(self._akm).replace("AsyncKernelManager", "KernelManager")

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._portal.run(coro)

    @property
    def async_manager(self) -> AsyncKernelManager:
        """The async manager this one drives (lives on the library's loop)."""
        return self._akm

    # Descriptive attributes read straight through.
    kernel_name = property(lambda self: self._akm.kernel_name)
    kernel_id = property(lambda self: self._akm.kernel_id)
    kernel_spec = property(lambda self: self._akm.kernel_spec)
    ipykernel = property(lambda self: self._akm.ipykernel)
    has_kernel = property(lambda self: self._akm.has_kernel)
    state: property = property(lambda self: self._akm.state)
    connection_info = property(lambda self: self._akm.connection_info)
    process = property(lambda self: self._akm.process)
    transport = property(lambda self: self._akm.transport)
    ip = property(lambda self: self._akm.ip)

    @property
    def connection_file(self) -> str:
        return self._akm.connection_file

    @connection_file.setter
    def connection_file(self, value: str) -> None:
        self._akm.connection_file = value

    @property
    def shutdown_wait_time(self) -> float:
        return self._akm.shutdown_wait_time

    @shutdown_wait_time.setter
    def shutdown_wait_time(self, value: float) -> None:
        self._akm.shutdown_wait_time = value

    @property
    def autorestart(self) -> bool:
        return self._akm.autorestart

    @autorestart.setter
    def autorestart(self, value: bool) -> None:
        self._akm.autorestart = value

    def get_connection_info(self, session: bool = False) -> dict[str, Any]:
        return self._akm.get_connection_info(session)

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        """The kernel's argv with ``{connection_file}`` and the like filled in."""
        return self._akm.format_kernel_cmd(extra_arguments)

    def start_kernel(self, **kw: Any) -> None:
        """Start a kernel on this host in a separate process (see the async twin)."""
        self._run(self._akm.start_kernel(**kw))

    def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """Stop the kernel: shutdown_request, then SIGTERM, then SIGKILL as needed."""
        self._run(self._akm.shutdown_kernel(now, restart))

    def restart_kernel(self, now: bool = False, newports: bool = False, **kw: Any) -> None:
        """Restart the kernel on the same ports, key and connection file."""
        self._run(self._akm.restart_kernel(now, newports, **kw))

    def interrupt_kernel(self) -> None:
        """Interrupt the kernel (SIGINT or interrupt_request, as its spec asks)."""
        self._run(self._akm.interrupt_kernel())

    def signal_kernel(self, signum: int) -> None:
        """Send a signal to the kernel's process group."""
        self._run(self._akm.signal_kernel(signum))

    def is_alive(self) -> bool:
        """Is the kernel process still running?"""
        return self._run(self._akm.is_alive())

    def request_shutdown(self, restart: bool = False) -> None:
        """Send a shutdown_request on the control channel."""
        self._run(self._akm.request_shutdown(restart))

    def finish_shutdown(
        self, waittime: float | None = None, pollinterval: float = 0.1, restart: bool = False
    ) -> None:
        """Wait for the kernel to exit, escalating to SIGTERM and SIGKILL."""
        self._run(self._akm.finish_shutdown(waittime, pollinterval, restart))

    def cleanup_resources(self, restart: bool = False) -> None:
        """Remove the connection file and ipc sockets of a stopped kernel."""
        self._run(self._akm.cleanup_resources(restart))

    def cleanup(self, connection_file: bool = True) -> None:
        """Clean up resources when the kernel is shut down."""
        self._run(self._akm.cleanup(connection_file))

    def kill_kernel(self) -> None:
        """Kill the kernel and its process group at once."""
        self._run(self._akm.kill_kernel())

    def wait_ready(self, timeout: float | None = 60.0) -> Message:
        """Block until the kernel answers kernel_info."""
        return self._run(self._akm.wait_ready(timeout))

    def client(self, **kwargs: Any) -> BlockingKernelClient:
        """A new blocking client for this kernel (channels not started)."""
        ac = self._portal.call(self._akm.client, **kwargs)
        return BlockingKernelClient(async_client=ac)

    def add_restart_callback(self, callback: Callable[[], Any], event: str = "restart") -> None:
        """Register a callback for automatic restarts (``restart``) or final death (``dead``).

        Callbacks run on the library's loop thread.
        """
        self._akm.add_restart_callback(callback, event)

    def remove_restart_callback(self, callback: Callable[[], Any], event: str = "restart") -> None:
        """Unregister a restart callback."""
        self._akm.remove_restart_callback(callback, event)

    def add_event_listener(self, callback: Callable[[KernelEvent], Any]) -> None:
        """Call ``callback(event)`` (on the loop thread) on every lifecycle event."""
        self._akm.add_event_listener(callback)

    def remove_event_listener(self, callback: Callable[[KernelEvent], Any]) -> None:
        self._akm.remove_event_listener(callback)

    def __enter__(self) -> KernelManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown_kernel(now=True)


@atexit.register
def _shutdown_leftovers() -> None:
    # Kernels die with this process anyway (their watchdog sees the pipe
    # close); here we also reap them and remove their connection files.
    lt = loopthread.current()
    # Also managers whose kernel is dead but whose files remain (a failed restart).
    managers = [
        m
        for m in list(_live_managers)
        if m._portal is lt and (m.has_kernel or m._akm.connection_info is not None)
    ]
    if not managers or lt is None:
        return

    async def stop_all() -> None:
        await asyncio.gather(
            *(m._akm.shutdown_kernel(now=True) for m in managers), return_exceptions=True
        )

    with contextlib.suppress(Exception):
        lt.run(stop_all(), timeout=10)


def start_new_kernel(
    startup_timeout: float = 60, kernel_name: str = "python", **kwargs: Any
) -> tuple[KernelManager, BlockingKernelClient]:
    """Start a new kernel, and return its manager and a ready client."""
    ctor = {k: kwargs.pop(k) for k in list(kwargs) if k not in _LAUNCH_KEYS}
    km = KernelManager(kernel_name, **ctor)
    km.start_kernel(startup_timeout=startup_timeout, **kwargs)
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=startup_timeout)
    except BaseException:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc


@contextlib.contextmanager
def run_kernel(**kwargs: Any) -> Iterator[BlockingKernelClient]:
    """Context manager to create a kernel in a subprocess.

    The kernel is shut down when the context exits. Returns a connected,
    ready client.
    """
    km, kc = start_new_kernel(**kwargs)
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

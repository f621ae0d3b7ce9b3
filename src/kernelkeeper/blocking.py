"""The blocking facade: the async core run on an event-loop thread (the portal).

:class:`BlockingKernelClient` and :class:`KernelManager` are derived from
:class:`AsyncKernelClient` and :class:`AsyncKernelManager` at import (see
:mod:`kernelkeeper.face`): every public member of the async class appears
here with the same signature, its call handed to the portal's loop. What is
written here is only what differs in a blocking world: construction, the
context managers, ``stop_channels`` (which waits for the channel tasks),
and the output/stdin hooks of executions, which run in the calling thread.

The same code thus serves scripts, threads and callers already inside an
asyncio loop (a notebook, say): the caller's own loop is never touched.

The protocol's requests (``kernel_info``, ``execute``, ... see
:data:`~kernelkeeper.protocol.REQUESTS`) take a shorter way than a derived
call: one plain callback posted to the loop sends the request, and the
reply's arrival releases the caller directly (a
:class:`~kernelkeeper.loopthread.Handoff`), with no task, future or second
loop hop in between.
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

import zmq

from . import loopthread
from .blocking_channels import BlockingChannel, BlockingHBChannel
from .boundary import mapped, translate
from .channels import MsgId, RawSockets, connect_socket
from .client import AsyncKernelClient, CellResult, ConnectionSource
from .errors import ConnectionFileError, KernelTimeoutError
from .execution import maybe_await
from .face import Face, copy_meta, derive, register
from .loopthread import Handoff, LoopThread
from .manager import AsyncKernelManager
from .manager_compat import set_blocking_client_factory
from .protocol import REQUESTS, Request
from .session import Message
from .starting import LAUNCH_KEYS

__all__ = [
    "BlockingChannel",
    "BlockingHBChannel",
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


def _fast_requests(cls: type[BlockingKernelClient]) -> type[BlockingKernelClient]:
    """Give the face each protocol request as a one-crossing round trip."""
    for name, req in REQUESTS.items():
        if name not in vars(cls):
            setattr(cls, name, _fast_request(name, req))
    return cls


def _fast_request(name: str, req: Request) -> Callable[..., Any]:
    def method(self: BlockingKernelClient, /, *args: Any, **kwargs: Any) -> Any:
        return self._round_trip(name, req, args, kwargs)

    copy_meta(method, getattr(AsyncKernelClient, name))
    return method


@derive(AsyncKernelClient)
@_fast_requests
class BlockingKernelClient(Face, RawSockets):
    """A kernel client with blocking methods (jupyter_client's BlockingKernelClient API).

    Build it from connection info (a :class:`ConnectionInfo`, a dict or a
    connection file path), or as jupyter_client does:
    ``BlockingKernelClient(connection_file=path)`` then
    ``load_connection_file()``; or get one from ``KernelManager.client()``.
    Every method of :class:`AsyncKernelClient` is here, blocking.

    :param portal: the loop thread to run on (default: the library's own).
    """

    # jupyter_client's names: the classes of what ``shell_channel`` etc. give here.
    shell_channel_class = BlockingChannel
    iopub_channel_class = BlockingChannel
    stdin_channel_class = BlockingChannel
    control_channel_class = BlockingChannel
    hb_channel_class = BlockingHBChannel

    def __init__(
        self,
        connection_info: ConnectionSource | None = None,
        *,
        connection_file: str | os.PathLike[str] | None = None,
        async_client: AsyncKernelClient | None = None,
        portal: LoopThread | None = None,
        **kwargs: Any,
    ) -> None:
        p = portal or loopthread.portal()
        if async_client is None:
            async_client = p.call(
                AsyncKernelClient, connection_info, connection_file=connection_file, **kwargs
            )
        self._bind(async_client, p)

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncKernelClient", "BlockingKernelClient")

    @property
    def async_client(self) -> AsyncKernelClient:
        """The async client this one drives (lives on the portal's loop)."""
        client: AsyncKernelClient = self._async
        return client

    def stop_channels(self) -> None:
        """Close every channel and wait for their tasks; pending waits fail with
        :class:`NotRunningError`."""
        self._portal.run(self._async.aclose())

    def _round_trip(
        self, name: str, req: Request, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # A request: built, signed and sent by one callback on the loop; the
        # reply (or a death, or closed channels) releases this thread from the
        # loop's reader callback directly.
        ac = self._async
        portal = self._portal
        cls = type(ac)
        if (
            portal.on_loop_thread()
            or getattr(cls, name) is not getattr(AsyncKernelClient, name)
            or cls._request is not AsyncKernelClient._request
            or cls._request_to is not AsyncKernelClient._request_to
        ):
            return self._call(name, args, kwargs)  # a hook on the loop, or a subclass's own
        reply = bool(kwargs.get("reply", False))
        timeout: float | None = kwargs.get("timeout")
        box = Handoff(name)

        def start() -> None:
            try:
                content = req.build(ac, *args, **kwargs)
                msg_id = ac._request_to(req.channel, req.msg_type, content, box if reply else None)
                box.label = msg_id
                if not reply:
                    box.set_result(MsgId(msg_id))
            except BaseException as e:
                box.set_exception(e)

        portal.post(start)
        try:
            if not box.wait(timeout if reply else None):
                raise KernelTimeoutError(f"No reply to {box.label} within {timeout} s")
        except BaseException:
            # Timed out, or Ctrl-C: the loop forgets the wait (after ``start``, in order).
            portal.loop.call_soon_threadsafe(lambda: ac.router.withdraw(box.label, box))
            raise
        try:
            return box.result()
        except BaseException as e:
            new = translate(e)
            if new is e:
                raise
            raise new from e

    def _recv_reply(
        self, msg_id: str, timeout: float | None = None, channel: str = "shell"
    ) -> Message:
        """jupyter_client's private reply reader (see ``AsyncKernelClient._async_recv_reply``)."""
        reply: Message = self._call("_async_recv_reply", (msg_id, timeout, channel), {})
        return reply

    # Raw sockets for a blocking caller: plain zmq sockets (the async client's
    # are asyncio sockets of its loop), as jupyter_client's blocking client gives;
    # connect_shell ... connect_hb come from RawSockets.

    def _connect(self, channel: str, identity: bytes | None) -> Any:
        info = self._async.connection_info
        if info is None:
            raise ConnectionFileError("The client has no connection info; load it first")
        return connect_socket(zmq.Context.instance(), info, channel, identity)

    def __enter__(self) -> BlockingKernelClient:
        self.start_channels()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_channels()

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
        reply: Message = self._run_relayed(
            inbox,
            self._async.execute_interactive(
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
        return reply

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
        result: CellResult = self._run_relayed(
            inbox,
            self._async.run_cell(
                code,
                timeout=timeout,
                on_output=out,
                stdin_hook=inp,
                silent=silent,
                store_history=store_history,
                stop_on_error=stop_on_error,
            ),
        )
        return result

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
                    with mapped():
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


@derive(AsyncKernelManager)
class KernelManager(Face):
    """Manages a single kernel in a subprocess on this host (blocking API).

    The same arguments and methods as :class:`AsyncKernelManager`, as plain
    calls; ``client()`` gives a :class:`BlockingKernelClient`. Kernels still
    running when the interpreter exits are killed and their files removed.

    :param portal: the loop thread to run on (default: the library's own).
    """

    def __init__(
        self, kernel_name: str = "", *, portal: LoopThread | None = None, **kwargs: Any
    ) -> None:
        p = portal or loopthread.portal()
        self._bind(p.call(AsyncKernelManager, kernel_name, **kwargs), p)
        _live_managers.add(self)

    @classmethod
    def from_async(
        cls: type[_KM], akm: AsyncKernelManager, portal: LoopThread | None = None
    ) -> _KM:
        """The blocking face of an existing ``akm`` (which must live on the portal's loop).

        The face does not own the kernel: whoever made ``akm`` (a multi-kernel
        manager, say) shuts it down, so it is not killed at interpreter exit here.
        """
        self = cls.__new__(cls)
        self._bind(akm, portal or loopthread.portal())
        return self

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncKernelManager", "KernelManager")

    @property
    def async_manager(self) -> AsyncKernelManager:
        """The async manager this one drives (lives on the portal's loop)."""
        akm: AsyncKernelManager = self._async
        return akm

    def __enter__(self) -> KernelManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown_kernel(now=True)


register(AsyncKernelClient, lambda ac, p: BlockingKernelClient(async_client=ac, portal=p))
register(AsyncKernelManager, lambda akm, p: KernelManager.from_async(akm, p))


@atexit.register
def _shutdown_leftovers() -> None:
    # Kernels die with this process anyway (their watchdog sees the pipe
    # close); here we also reap them and remove their connection files.
    # Also managers whose kernel is dead but whose files remain (a failed restart).
    by_portal: dict[LoopThread, list[AsyncKernelManager]] = {}
    for m in list(_live_managers):
        lt = m._portal
        akm = m.async_manager
        if lt.pid == os.getpid() and lt.thread.is_alive() and not lt.loop.is_closed():
            if akm.has_kernel or akm.connection_info is not None:
                by_portal.setdefault(lt, []).append(akm)

    for lt, managers in by_portal.items():

        async def stop_all(managers: list[AsyncKernelManager] = managers) -> None:
            await asyncio.gather(
                *(m.shutdown_kernel(now=True) for m in managers), return_exceptions=True
            )

        with contextlib.suppress(Exception):
            lt.run(stop_all(), timeout=10)


def start_new_kernel(
    startup_timeout: float = 60,
    kernel_name: str = "python",
    *,
    portal: LoopThread | None = None,
    **kwargs: Any,
) -> tuple[KernelManager, BlockingKernelClient]:
    """Start a new kernel, and return its manager and a ready client."""
    ctor = {k: kwargs.pop(k) for k in list(kwargs) if k not in LAUNCH_KEYS}
    km = KernelManager(kernel_name, portal=portal, **ctor)
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


# The lifecycle layer does not import the faces: this face tells it its client class.
set_blocking_client_factory(BlockingKernelClient)

"""The gateway's state, below its faces: configuration, the multi-kernel manager,
the kernels' bridges, lifecycle events, restarts and deletions, and metrics.

The HTTP side (:mod:`kernelkeeper.gateway_rest`, :mod:`kernelkeeper.gateway_ws`,
:mod:`kernelkeeper.gateway_sessions`) works on a :class:`GatewayCore`;
:class:`kernelkeeper.gateway.Gateway` adds the aiohttp app and the listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .connection import ConnectionInfo
from .culling import CullPolicy
from .errors import ConfigurationError, KernelError
from .events import KernelEvent
from .gateway_auth import CorsConfig, is_loopback
from .gateway_bridge import (
    CLOSE_GOING_AWAY,
    CLOSE_KERNEL_GONE,
    BridgeLimits,
    KernelBridge,
    take_sockets,
)
from .gateway_env import EnvPolicy, base_environment
from .heaptrim import HeapTrimmer
from .manager import AsyncKernelManager
from .metrics import pool_gauges
from .multikernel import AsyncMultiKernelManager
from .pool import KernelPool

__all__ = ["ApiError", "GatewayConfig", "GatewayCore", "WsLimits", "WsStats"]

log = logging.getLogger("kernelkeeper.gateway")


class ApiError(KernelError):
    """An HTTP error with a JSON body ``{"reason", "message"}``."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or http.HTTPStatus(status).phrase


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway is told.

    ``pools``: ``{kernel_name: size}`` of warm pools. ``cull_idle_timeout``:
    seconds idle before a kernel is culled (None: never). ``ready_timeout``:
    how long a WebSocket upgrade waits for the kernel. ``launch_timeout``:
    the default start deadline (``KERNEL_LAUNCH_TIMEOUT`` overrides it).
    ``replay_bytes``/``replay_age`` bound what is buffered for a session with
    no socket. ``fork_server``: fork Python kernels from a template that has
    imported ipykernel (True; :mod:`kernelkeeper.forkserver`: a start takes a
    fraction of a spawn's time), never (False), or as ``KERNELKEEPER_FORKSERVER``
    says (None, the library's default; the command line turns it on, since its
    templates end with its process). ``kernel_manager_kw`` goes to every kernel's manager.
    """

    ip: str = "127.0.0.1"
    port: int = 8888
    token: str = ""
    base_url: str = "/"
    pools: Mapping[str, int] = dataclasses.field(default_factory=dict)
    max_kernels: int | None = None
    cull_idle_timeout: float | None = None
    cull_interval: float = 60.0
    cull_busy: bool = False
    cull_connected: bool = False
    allow_origin: str = ""
    allow_credentials: bool = False
    allow_unauthenticated_remote: bool = False
    allowed_envs: frozenset[str] = frozenset()
    working_dir_root: str | None = None
    default_kernel_name: str = "python3"
    list_kernels: bool = True
    ready_timeout: float = 60.0
    launch_timeout: float = 120.0
    max_message_size: int = 64 << 20
    ping_interval: float = 30.0
    send_queue_messages: int = 10000
    send_queue_bytes: int = 64 << 20
    replay_bytes: int = 32 << 20
    replay_age: float = 120.0
    fork_server: bool | None = None
    kernel_manager_kw: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"autorestart": True}
    )

    def check(self) -> None:
        """ConfigurationError for a configuration that must not run."""
        if not self.token and not is_loopback(self.ip) and not self.allow_unauthenticated_remote:
            raise ConfigurationError(
                f"Refusing to serve kernels on {self.ip} without a token: anyone who can "
                "reach it could run code as you. Set a token (--token/--token-file) or "
                "pass --allow-unauthenticated-remote."
            )
        if self.max_message_size < 1 << 20:
            raise ConfigurationError("max_message_size must be at least 1 MiB")


@dataclasses.dataclass(frozen=True)
class WsLimits:
    """:param max_message_size: largest frame accepted from a client (bytes).
    :param ping_interval: seconds between pings (the client must answer).
    :param queue_messages: most messages queued for one socket.
    :param queue_bytes: most bytes queued for one socket."""

    max_message_size: int = 64 << 20
    ping_interval: float = 30.0
    queue_messages: int = 10000
    queue_bytes: int = 64 << 20


@dataclasses.dataclass
class WsStats:
    """Counters the gateway exports."""

    opened: int = 0
    open: int = 0
    dropped: int = 0
    dropped_bytes: int = 0
    bad_frames: int = 0
    replaced: int = 0


def failure_reason(detail: Mapping[str, Any]) -> str:
    """A line saying why the supervisor restarts a kernel or gave up on it."""
    what = str(detail.get("reason") or "failed")
    if detail.get("signal"):
        what += f" (signal {detail['signal']})"
    elif detail.get("exit_code") is not None:
        what += f" (exit code {detail['exit_code']})"
    elif detail.get("missed_heartbeats"):
        what += f" ({detail['missed_heartbeats']} missed heartbeats)"
    why = detail.get("why")
    return f"{what}: {why}" if why else what


def _base_url(url: str) -> str:
    url = "/" + url.strip("/")
    return url if url == "/" else url + "/"


class GatewayCore:
    """What the gateway's handlers work on: the manager, the bridges, the limits."""

    def __init__(self, config: GatewayConfig | None = None) -> None:
        self.config = cfg = config or GatewayConfig()
        cfg.check()
        self.base_url = _base_url(cfg.base_url)
        self.cors = CorsConfig(
            allow_origin=cfg.allow_origin, allow_credentials=cfg.allow_credentials
        )
        self.env_policy = EnvPolicy(frozenset(cfg.allowed_envs), cfg.working_dir_root)
        #: The environment every kernel starts from: ours without secrets.
        self.base_env = base_environment()
        self.ws_limits = WsLimits(
            cfg.max_message_size, cfg.ping_interval, cfg.send_queue_messages, cfg.send_queue_bytes
        )
        self.ws_stats = WsStats()
        self.bridge_limits = BridgeLimits(cfg.replay_bytes, cfg.replay_age, cfg.ready_timeout)
        km_kw = dict(cfg.kernel_manager_kw)
        #: What every start is given besides its environment.
        self.start_kw: dict[str, Any] = {}
        if cfg.fork_server is not None:
            self.start_kw["fork_server"] = cfg.fork_server
        #: The warm pools by kernel name (the manager serves starts from them). Their
        #: kernels start from :attr:`base_env`, so a request without variables of its
        #: own is served from the pool.
        self.pools: dict[str, KernelPool] = {
            name: KernelPool(
                name,
                min_size=size,
                factory=lambda n=name: AsyncKernelManager(n, **km_kw),  # type: ignore[misc]
                start_kw={"env": self.base_env, **self.start_kw},
            )
            for name, size in cfg.pools.items()
            if size > 0
        }
        self.mkm = AsyncMultiKernelManager(
            default_kernel_name=cfg.default_kernel_name,
            max_kernels=cfg.max_kernels,
            cull=CullPolicy(
                idle_timeout=cfg.cull_idle_timeout,
                interval=cfg.cull_interval,
                cull_busy=cfg.cull_busy,
                cull_connected=cfg.cull_connected,
            ),
            pools=dict(self.pools),
            ready_timeout=None,  # each start has its own deadline (launch_timeout)
            kernel_manager_kw=km_kw,
        )
        self.bridges: dict[str, KernelBridge] = {}
        #: Why a kernel is restarting on its own, or was given up (for its model).
        self.reasons: dict[str, str] = {}
        # Bridges being made from a client proven ready (see prepare_bridge).
        self._preparing: dict[str, asyncio.Task[KernelBridge]] = {}
        #: Called with the id of a kernel that is gone (deleted or culled).
        self.kernel_gone_hooks: list[Callable[[str], None]] = []
        self.closing = False
        # Hands freed heap back to the system a moment after kernels end.
        self._trimmer = HeapTrimmer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start_kernels(self) -> None:
        """Follow the manager's events and start it (filling the pools)."""
        self._loop = asyncio.get_running_loop()
        self.mkm.add_event_listener(self._on_event)
        await self.mkm.start()

    async def close_kernels(self) -> None:
        """Close every bridge (its sockets told the gateway goes away), end every kernel."""
        self.closing = True
        for kid in list(self._preparing):
            self._preparing[kid].cancel()
            await self._settled(kid)
        for kid in list(self.bridges):
            await self._close_bridge(kid, CLOSE_GOING_AWAY, "gateway shutting down")
        self.mkm.remove_event_listener(self._on_event)
        await self.mkm.aclose()
        self._trimmer.cancel()
        tasks, self._tasks = list(self._tasks), set()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # -- kernels and their bridges -------------------------------------------------

    def bridge(self, kernel_id: str) -> KernelBridge:
        """The zmq bridge of a kernel's WebSockets (made on first use)."""
        b = self.bridges.get(kernel_id)
        if b is None:
            b = self.bridges[kernel_id] = KernelBridge(
                kernel_id,
                self._info(kernel_id),
                self.bridge_limits,
                activity=self.mkm.activity(kernel_id),
            )
        return b

    def _info(self, kernel_id: str) -> ConnectionInfo:
        info = self.mkm.get_kernel(kernel_id).connection_info
        if info is None:
            raise KernelError(f"Kernel {kernel_id} has no connection info yet")
        return info

    def prepare_bridge(self, kernel_id: str) -> None:
        """Make a new kernel's bridge in the background (while its POST is answered
        and the client opens its WebSocket), from a client proven ready: a pool
        hit's, which is ready already, or a new one. Its sockets become the bridge's,
        so the WebSocket needs no readiness probe of its own."""
        if kernel_id in self.bridges or kernel_id in self._preparing:
            return
        task = asyncio.get_running_loop().create_task(
            self._adopting_bridge(kernel_id), name=f"kk-gw-bridge-{kernel_id[:8]}"
        )
        self._preparing[kernel_id] = task
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _adopting_bridge(self, kernel_id: str) -> KernelBridge:
        try:
            kc = self.mkm.client(kernel_id)
            try:
                await kc.wait_for_ready(timeout=self.config.ready_timeout)
                sockets = take_sockets(kc)
            finally:
                await kc.aclose()
            if kernel_id in self.bridges or self.closing or kernel_id not in self.mkm:
                for sock in sockets.values():
                    sock.close()
                return self.bridge(kernel_id)
            b = KernelBridge(
                kernel_id,
                self._info(kernel_id),
                self.bridge_limits,
                adopted=sockets,
                adopted_session=kc.session.session,
                activity=self.mkm.activity(kernel_id),
            )
            self.bridges[kernel_id] = b
            return b
        finally:
            self._preparing.pop(kernel_id, None)

    async def ready_bridge(self, kernel_id: str, timeout: float) -> KernelBridge:
        """The kernel's bridge once it is live (KernelTimeoutError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        task = self._preparing.get(kernel_id)
        if task is not None:
            try:
                made = await asyncio.wait_for(asyncio.shield(task), timeout)
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # we are cancelled ourselves
                raise KernelError(f"Kernel {kernel_id} went away") from None
            except KernelError:
                pass  # probe as below
            else:
                if made.live:
                    return made
        b = self.bridge(kernel_id)
        await asyncio.wait_for(b.wait_live(), max(0.1, deadline - time.monotonic()))
        return b

    async def _settled(self, kernel_id: str) -> None:
        """Wait until a bridge being made for the kernel is made (or failed)."""
        task = self._preparing.get(kernel_id)
        if task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(task)

    def kernel_model(self, kernel_id: str) -> dict[str, Any]:
        """The manager's model of a kernel, with ``reason`` while it restarts on its
        own or once it was given up (NoSuchKernelId if unknown)."""
        model = self.mkm.kernel_model(kernel_id)
        reason = self.reasons.get(kernel_id)
        if reason and model.get("execution_state") in ("restarting", "dead", "starting"):
            model.setdefault("reason", reason)
        return model

    async def restart_kernel(self, kernel_id: str) -> None:
        """Restart a kernel; its WebSockets keep working, nothing sent meanwhile is lost."""
        await self._settled(kernel_id)
        b = self.bridges.get(kernel_id)
        if b is not None:
            b.reset()  # hold clients' messages until the new process reaches our SUB
        try:
            await self.mkm.restart_kernel(kernel_id)
        except KernelError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ApiError(500, f"Exception restarting kernel: {first}") from e
        finally:
            if b is not None:
                b.revalidate()

    async def delete_kernel(self, kernel_id: str) -> None:
        """Shut a kernel down; its WebSockets get its final status, then a close."""
        await self.mkm.shutdown_kernel(kernel_id)
        await self._close_bridge(kernel_id, CLOSE_KERNEL_GONE, "kernel shut down")
        self._gone(kernel_id)

    def _gone(self, kernel_id: str) -> None:
        self.reasons.pop(kernel_id, None)
        self._trimmer.soon()
        for hook in list(self.kernel_gone_hooks):
            hook(kernel_id)

    async def _close_bridge(self, kernel_id: str, code: int, message: str) -> None:
        task = self._preparing.get(kernel_id)
        if task is not None:
            task.cancel()
            await self._settled(kernel_id)
        b = self.bridges.pop(kernel_id, None)
        if b is None:
            return
        await b.drain()
        b.announce("dead")
        b.close_sinks(lambda sink: sink.close_after_drain(code, message))
        await b.aclose()

    def _on_event(self, event: KernelEvent) -> None:
        # On a library thread: hand over to the loop.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._handle_event, event)

    def _handle_event(self, event: KernelEvent) -> None:
        kid, kind = event.kernel_id, event.kind
        if kind == "culled":
            self._gone(kid)
        auto = kind in ("restarting", "dead") and "now" not in event.detail
        if auto:
            self.reasons[kid] = failure_reason(event.detail)
        elif kind in ("restarted", "shutdown", "culled", "started"):
            self.reasons.pop(kid, None)
        b = self.bridges.get(kid)
        if b is None or b.closed:
            return
        if kind == "died":
            b.reset(probe=True)  # the process is gone: probe for its successor
        elif kind == "restarting" and auto:
            b.announce("restarting", self.reasons.get(kid))
        elif kind == "restarted":
            b.revalidate()
        elif kind == "dead":
            b.drop_held()
            b.announce("dead", self.reasons.get(kid))
        elif kind in ("culled", "shutdown") and kid not in self.mkm:
            self._own(self._close_bridge(kid, CLOSE_KERNEL_GONE, "kernel shut down"))

    def _own(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- metrics ------------------------------------------------------------------

    def render_metrics(self) -> str:
        """The manager's metrics and the gateway's, in Prometheus text format."""
        lines = [self.mkm.metrics.render().rstrip("\n")]
        for gauge in pool_gauges(self.pools):
            lines += gauge.render()
        replayed = sum(b.stats.replayed for b in self.bridges.values())
        for name, kind, help_, value in _gateway_rows(self.ws_stats, replayed):
            full = f"kernelkeeper_gateway_{name}"
            lines += [f"# HELP {full} {help_}", f"# TYPE {full} {kind}", f"{full} {value}"]
        return "\n".join(lines) + "\n"


def _gateway_rows(s: WsStats, replayed: int) -> list[tuple[str, str, str, int]]:
    """The gateway's own metrics: (name, type, help, value)."""
    return [
        ("websockets", "gauge", "Open WebSocket connections.", s.open),
        ("websocket_connections_total", "counter", "WebSockets opened.", s.opened),
        (
            "websocket_replaced_total",
            "counter",
            "WebSockets replaced by a newer one with the same session_id.",
            s.replaced,
        ),
        (
            "websocket_dropped_messages_total",
            "counter",
            "Messages dropped for WebSocket clients that read too slowly.",
            s.dropped,
        ),
        (
            "websocket_dropped_bytes_total",
            "counter",
            "Bytes dropped for WebSocket clients that read too slowly.",
            s.dropped_bytes,
        ),
        (
            "websocket_bad_frames_total",
            "counter",
            "Frames from clients that could not be used.",
            s.bad_frames,
        ),
        (
            "websocket_replayed_messages_total",
            "counter",
            "Buffered messages replayed to a reconnected session.",
            replayed,
        ),
    ]

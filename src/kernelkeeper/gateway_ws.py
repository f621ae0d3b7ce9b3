"""The channels WebSocket: ``/api/kernels/{id}/channels?session_id=...``.

Before the upgrade the kernel must exist and be ready (its start over, and
the bridge's readiness probe answered) within ``ready_timeout``; otherwise
the request gets an HTTP error, not a socket that never speaks.

Each WebSocket has a bounded send queue (messages and bytes) and a writer
task: the kernel's messages are put in the queue without waiting, so a
client that reads slowly only loses its own oldest messages (counted, and
told once it catches up), never stalls the kernel or another client.

Close codes: :data:`CLOSE_REPLACED` when a newer socket with the same
session_id takes over, :data:`CLOSE_KERNEL_GONE` after a kernel's final
status when it is deleted or culled, 1001 when the gateway shuts down, and
aiohttp's 1009 for a frame over the size limit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from .errors import KernelError, MessageError
from .gateway_auth import origin_allowed
from .gateway_bridge import (
    CLOSE_GOING_AWAY,
    CLOSE_KERNEL_GONE,
    CLOSE_REPLACED,
    ClientSession,
    KernelBridge,
    is_output,
)
from .gateway_core import GatewayCore, WsLimits, WsStats
from .gateway_wire import (
    V1_PROTOCOL,
    decode_legacy,
    decode_v1,
    encode_legacy,
    encode_v1,
    message_parts,
)
from .session import Session

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_KERNEL_GONE",
    "CLOSE_REPLACED",
    "WsConnection",
    "channels_handler",
]

log = logging.getLogger("kernelkeeper.gateway")

_notices = Session()  # signs nothing: builds the gateway's own messages to clients


def notice(text: str, parent: dict[str, Any] | None = None) -> list[bytes]:
    """The parts of an iopub ``stream`` message to stderr from the gateway itself."""
    msg = _notices.msg("stream", {"name": "stderr", "text": text}, parent=parent)
    return message_parts(msg)


class WsConnection:
    """One client WebSocket: its bounded send queue and writer task."""

    def __init__(self, ws: web.WebSocketResponse, limits: WsLimits, stats: WsStats) -> None:
        self.ws = ws
        self.v1 = ws.ws_protocol == V1_PROTOCOL
        self._limits = limits
        self._stats = stats
        self._queue: collections.deque[tuple[str, list[bytes], int]] = collections.deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self.dropped = 0
        self._unreported = 0
        self.writer = asyncio.get_running_loop().create_task(self._write(), name="kk-gw-ws")

    def deliver(self, channel: str, parts: list[bytes]) -> None:
        """Queue a message for the client; never waits. Over the bounds, the oldest
        queued output (iopub other than status) is dropped and counted: replies and
        statuses are kept, since a client that lost one would wait forever."""
        if self._close is not None:
            return
        size = sum(len(p) for p in parts)
        lim = self._limits
        while len(self._queue) >= lim.queue_messages or self._queued + size > lim.queue_bytes:
            if not self._drop_oldest_output():
                break
        self._queue.append((channel, parts, size))
        self._queued += size
        self._wake.set()

    def _drop_oldest_output(self) -> bool:
        for i, (channel, parts, size) in enumerate(self._queue):
            if is_output(channel, parts):
                del self._queue[i]
                self._queued -= size
                self._count_drop(size)
                return True
        return False

    def _count_drop(self, size: int) -> None:
        self.dropped += 1
        self._unreported += 1
        self._stats.dropped += 1
        self._stats.dropped_bytes += size

    def close_after_drain(self, code: int, message: str) -> None:
        """Close the socket with ``code`` once what is queued has been sent."""
        if self._close is None:
            self._close = (code, message)
            self._wake.set()

    def encode(self, channel: str, parts: list[bytes]) -> str | bytes:
        return encode_v1(channel, parts) if self.v1 else encode_legacy(channel, parts)

    async def _write(self) -> None:
        ws = self.ws
        try:
            while True:
                if not self._queue:
                    if self._unreported:
                        n, self._unreported = self._unreported, 0
                        text = (
                            f"kernelkeeper gateway: {n} messages to this connection were "
                            "dropped because it read too slowly\n"
                        )
                        self._queue.append(("iopub", notice(text), 0))
                        continue
                    if self._close is not None:
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                channel, parts, size = self._queue.popleft()
                self._queued -= size
                try:
                    data = self.encode(channel, parts)
                except (MessageError, ValueError, UnicodeError) as e:
                    log.warning("dropping a kernel message that cannot be encoded: %s", e)
                    continue
                if isinstance(data, bytes):
                    await ws.send_bytes(data)
                else:
                    await ws.send_str(data)
        except (ConnectionError, RuntimeError) as e:  # the client went away
            log.debug("websocket writer ends: %s", e)
            self._close = self._close or (CLOSE_GOING_AWAY, "")
            return
        code, message = self._close
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close(code=code, message=message.encode())

    async def aclose(self) -> None:
        """Stop the writer (what is still queued is dropped)."""
        if not self.writer.done():
            self.writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.writer


def _error(status: int, message: str) -> web.Response:
    import http

    reason = http.HTTPStatus(status).phrase
    return web.json_response({"reason": reason, "message": message}, status=status)


def _session_id(request: web.Request) -> str | None:
    sid = request.query.get("session_id") or str(uuid.uuid4())
    # It becomes a zmq identity (at most 255 bytes, and routed by the kernel).
    if len(sid) > 128 or not sid.isprintable():
        return None
    return sid


def channels_handler(gw: GatewayCore) -> Any:
    """The aiohttp handler of the channels WebSocket for ``gw``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        kernel_id = request.match_info["kernel_id"]
        mkm = gw.mkm
        if kernel_id not in mkm:
            return _error(404, f"Kernel does not exist: {kernel_id}")
        origin = request.headers.get("Origin")
        if origin and not origin_allowed(gw.cors, origin, request.host):
            return _error(403, f"Cross-origin WebSocket from {origin[:100]} is not allowed")
        session_id = _session_id(request)
        if session_id is None:
            return _error(400, "session_id must be at most 128 printable characters")
        deadline = gw.config.ready_timeout
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(mkm.kernel_ready(kernel_id)), deadline)
            bridge = await gw.ready_bridge(kernel_id, max(0.1, deadline - (time.monotonic() - t0)))
        except (asyncio.TimeoutError, TimeoutError):
            return _error(503, f"Kernel {kernel_id} did not become ready within {deadline:g} s")
        except KernelError as e:
            if kernel_id not in mkm:
                return _error(404, f"Kernel does not exist: {kernel_id}")
            return _error(500, f"Kernel {kernel_id} is not usable: {str(e).splitlines()[0]}")
        if gw.closing or bridge.closed:
            return _error(503, "The gateway is shutting down")
        ws = web.WebSocketResponse(
            protocols=(V1_PROTOCOL,),
            max_msg_size=gw.ws_limits.max_message_size,
            heartbeat=gw.ws_limits.ping_interval,
            # As jupyter_server by default: deflate costs more CPU and latency than
            # it saves on the networks kernels are reached over.
            compress=False,
        )
        await ws.prepare(request)
        conn = WsConnection(ws, gw.ws_limits, gw.ws_stats)
        cs = bridge.session(session_id)
        stale = cs.attach(conn)
        if isinstance(stale, WsConnection):
            gw.ws_stats.replaced += 1
            stale.close_after_drain(CLOSE_REPLACED, "replaced by a newer connection")
        gw.ws_stats.opened += 1
        gw.ws_stats.open += 1
        with contextlib.suppress(KernelError):
            mkm.add_connection(kernel_id)
        try:
            await _read(ws, conn, bridge, cs, gw)
        finally:
            gw.ws_stats.open -= 1
            cs.detach(conn)
            with contextlib.suppress(KernelError):
                mkm.remove_connection(kernel_id)
            conn.close_after_drain(CLOSE_GOING_AWAY, "")
            if not conn.writer.done():
                # Let the writer send what is queued and the close frame, briefly.
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(conn.writer), 1.0)
            await conn.aclose()
        return ws

    return handler


async def _read(
    ws: web.WebSocketResponse,
    conn: WsConnection,
    bridge: KernelBridge,
    cs: ClientSession,
    gw: GatewayCore,
) -> None:
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            data: str | bytes = msg.data
        elif msg.type is WSMsgType.BINARY:
            data = msg.data
        elif msg.type is WSMsgType.ERROR:
            log.info("websocket of kernel %s: %s", bridge.kernel_id, ws.exception())
            return
        else:
            continue
        try:
            if isinstance(data, bytes) and conn.v1:
                incoming = decode_v1(data)
            else:
                incoming = decode_legacy(data)
        except MessageError as e:
            gw.ws_stats.bad_frames += 1
            conn.deliver("iopub", notice(f"kernelkeeper gateway: bad message dropped: {e}\n"))
            continue
        if incoming.channel == "iopub":
            gw.ws_stats.bad_frames += 1
            parent = {"header": incoming.header}
            conn.deliver(
                "iopub", notice("kernelkeeper gateway: clients cannot send on iopub\n", parent)
            )
            continue
        if cs.sink is not conn:
            return  # replaced by a newer socket of the same session
        bridge.send(cs, incoming.channel, incoming.parts)

"""Helpers for the gateway tests: a gateway fixture factory and a small WebSocket
kernel client on aiohttp (import as ``from gwhelpers import ...``)."""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from kernelkeeper.gateway import Gateway, GatewayConfig
from kernelkeeper.gateway_wire import V1_PROTOCOL

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"token {TOKEN}"}


def config(**kw: Any) -> GatewayConfig:
    kw.setdefault("port", 0)
    kw.setdefault("token", TOKEN)
    return GatewayConfig(**kw)


async def running(cfg: GatewayConfig) -> AsyncIterator[Gateway]:
    gw = Gateway(cfg)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.aclose()


def header(msg_type: str, session: str, msg_id: str | None = None) -> dict[str, Any]:
    return {
        "msg_id": msg_id or uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": "test",
        "session": session,
        "date": "2026-12-01T00:00:00.000000Z",
        "version": "5.3",
    }


def decode(msg: aiohttp.WSMessage, v1: bool) -> dict[str, Any]:
    """A received frame as a message dict with ``channel`` and ``buffers``."""
    if msg.type is aiohttp.WSMsgType.TEXT:
        d: dict[str, Any] = json.loads(msg.data)
        d["buffers"] = []
        return d
    assert msg.type is aiohttp.WSMsgType.BINARY, msg
    data: bytes = msg.data
    if v1:
        (n,) = struct.unpack_from("<Q", data)
        offs = struct.unpack_from(f"<{n}Q", data, 8)
        chunks = [data[a:b] for a, b in itertools.pairwise(offs)]
        channel = chunks[0].decode()
        h, p, m, c = (json.loads(x) for x in chunks[1:5])
        return {
            "channel": channel,
            "header": h,
            "msg_type": h["msg_type"],
            "parent_header": p,
            "metadata": m,
            "content": c,
            "buffers": chunks[5:],
        }
    (n,) = struct.unpack_from("!I", data)
    offs = [*struct.unpack_from(f"!{n}I", data, 4), len(data)]
    bufs = [data[a:b] for a, b in itertools.pairwise(offs)]
    d = json.loads(bufs[0])
    d["buffers"] = bufs[1:]
    return d


def encode_v1(channel: str, msg: dict[str, Any], buffers: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    parts = [
        json.dumps(msg["header"]).encode(),
        json.dumps(msg.get("parent_header", {})).encode(),
        json.dumps(msg.get("metadata", {})).encode(),
        json.dumps(msg.get("content", {})).encode(),
        *buffers,
    ]
    chan = channel.encode()
    n = 2 + len(parts)
    offsets = [8 * (1 + n), 8 * (1 + n) + len(chan)]
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    return struct.pack(f"<{n + 1}Q", n, *offsets) + chan + b"".join(parts)


def encode_legacy_binary(msg: dict[str, Any], buffers: list[bytes]) -> bytes:
    blobs = [json.dumps(msg).encode(), *buffers]
    offsets = [4 * (1 + len(blobs))]
    for b in blobs[:-1]:
        offsets.append(offsets[-1] + len(b))
    return struct.pack(f"!{len(blobs) + 1}I", len(blobs), *offsets) + b"".join(blobs)


class WsKernel:
    """A WebSocket to a kernel through the gateway, speaking one of the formats."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: str) -> None:
        self.ws = ws
        self.session = session
        self.v1 = ws.protocol == V1_PROTOCOL
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls,
        http: aiohttp.ClientSession,
        gw: Gateway,
        kernel_id: str,
        session: str | None = None,
        v1: bool = False,
        **kw: Any,
    ) -> WsKernel:
        session = session or uuid.uuid4().hex
        url = f"{gw.url}api/kernels/{kernel_id}/channels?session_id={session}"
        protocols = (V1_PROTOCOL,) if v1 else ()
        ws = await http.ws_connect(url, protocols=protocols, **kw)
        return cls(ws, session)

    async def send(
        self,
        msg_type: str,
        content: dict[str, Any],
        channel: str = "shell",
        buffers: list[bytes] | None = None,
    ) -> str:
        msg = {
            "header": header(msg_type, self.session),
            "parent_header": {},
            "metadata": {},
            "content": content,
        }
        if self.v1:
            await self.ws.send_bytes(encode_v1(channel, msg, buffers or []))
        elif buffers:
            await self.ws.send_bytes(encode_legacy_binary({**msg, "channel": channel}, buffers))
        else:
            await self.ws.send_str(json.dumps({**msg, "channel": channel}))
        return str(msg["header"]["msg_id"])

    async def recv(self, timeout: float = 30.0) -> dict[str, Any]:
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        ):
            raise ConnectionError(f"closed: {msg.data} {msg.extra}")
        d = decode(msg, self.v1)
        self.seen.append(d)
        return d

    async def until(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            d = await self.recv(max(0.01, deadline - time.monotonic()))
            if pred(d):
                return d

    async def execute(self, code: str, timeout: float = 60.0) -> tuple[str, dict[str, Any]]:
        """Run ``code``; returns (its stdout, the execute_reply) once its idle status came."""
        mid = await self.send("execute_request", {"code": code, "silent": False})
        return await self.collect(mid, timeout)

    async def collect(self, mid: str, timeout: float = 60.0) -> tuple[str, dict[str, Any]]:
        out: list[str] = []
        reply: dict[str, Any] | None = None
        idle = False
        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            d = await self.recv(max(0.01, deadline - time.monotonic()))
            if d["parent_header"].get("msg_id") != mid:
                continue
            if d["msg_type"] == "stream" and d["content"]["name"] == "stdout":
                out.append(d["content"]["text"])
            elif d["msg_type"] == "execute_reply":
                reply = d
            elif d["msg_type"] == "status" and d["content"]["execution_state"] == "idle":
                idle = True
        return "".join(out), reply

    async def close(self) -> None:
        await self.ws.close()


async def start_kernel(http: aiohttp.ClientSession, gw: Gateway, **body: Any) -> str:
    r = await http.post(gw.url + "api/kernels", json=body)
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])

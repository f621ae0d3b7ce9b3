"""The gateway's WebSocket wire formats: pure functions over bytes, no I/O.

A kernel message travels between a WebSocket and a kernel's zmq socket as
*parts*: ``[header, parent_header, metadata, content, *buffers]``, the JSON
frames exactly as zmq carries them after the delimiter and the signature.
Three WebSocket formats carry them:

- ``v1.kernel.websocket.jupyter.org`` (JupyterLab 4): a binary frame with a
  little-endian u64 offset table, then the channel name and the parts. The
  parts are the zmq frames themselves, so nothing is re-serialised.
- legacy JSON: one text frame per message, the message as a JSON object
  with a ``channel`` key.
- legacy binary, for legacy messages with buffers: a big-endian u32 count,
  u32 offsets, the JSON of the message (without ``buffers``), the buffers.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Sequence
from typing import Any

from .errors import MessageError
from .session import pack

__all__ = [
    "CHANNELS",
    "V1_PROTOCOL",
    "Incoming",
    "decode_legacy",
    "decode_v1",
    "encode_legacy",
    "encode_v1",
    "parse_header",
]

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
#: The channels a WebSocket client may address (hb is the gateway's business).
CHANNELS = frozenset({"shell", "iopub", "stdin", "control"})

_U64 = 8
_U32 = 4
# More offsets than this in a header is not a message, it is an attack on our memory.
_MAX_PARTS = 1 << 16


class Incoming:
    """A message from a WebSocket client: its channel, parts and parsed header."""

    __slots__ = ("channel", "header", "parts")

    def __init__(self, channel: str, parts: list[bytes], header: dict[str, Any]) -> None:
        self.channel = channel
        self.parts = parts
        self.header = header

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))


def parse_header(raw: bytes) -> dict[str, Any]:
    """The header frame as a dict; :class:`MessageError` unless it is an object with a
    string ``msg_type``."""
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise MessageError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str):
        raise MessageError("header is not an object with a string msg_type")
    return header


def _channel(name: Any) -> str:
    if name is None:
        return "shell"  # as jupyter_server: no channel means shell
    if not isinstance(name, str) or name not in CHANNELS:
        raise MessageError(f"no such channel: {str(name)[:40]!r}")
    return name


# -- v1.kernel.websocket.jupyter.org ----------------------------------------------


def encode_v1(channel: str, parts: Sequence[bytes]) -> bytes:
    """One v1 binary frame for ``parts`` on ``channel``."""
    chan = channel.encode("ascii")
    n = 2 + len(parts)  # start of channel, end of channel, end of each part
    offsets = [_U64 * (1 + n), _U64 * (1 + n) + len(chan)]
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    table = struct.pack(f"<{n + 1}Q", n, *offsets)
    return b"".join((table, chan, *parts))


def decode_v1(data: bytes) -> Incoming:
    """Parse a v1 frame; :class:`MessageError` for anything malformed."""
    if len(data) < _U64:
        raise MessageError("v1 frame shorter than its offset count")
    (n,) = struct.unpack_from("<Q", data)
    if n < 6 or n > _MAX_PARTS or len(data) < _U64 * (1 + n):
        raise MessageError(f"v1 frame with a bad offset count ({n})")
    offsets = struct.unpack_from(f"<{n}Q", data, _U64)
    if offsets[0] < _U64 * (1 + n) or offsets[-1] > len(data):
        raise MessageError("v1 frame offsets point outside the frame")
    if any(b < a for a, b in itertools.pairwise(offsets)):
        raise MessageError("v1 frame offsets are not in order")
    view = memoryview(data)
    try:
        name = bytes(view[offsets[0] : offsets[1]]).decode("ascii")
    except UnicodeDecodeError:
        raise MessageError("v1 frame with a channel name that is not ASCII") from None
    parts = [bytes(view[a:b]) for a, b in itertools.pairwise(offsets[1:])]
    header = parse_header(parts[0])
    for i, what in ((1, "parent_header"), (2, "metadata"), (3, "content")):
        _check_object(parts[i], what)
    return Incoming(_channel(name), parts, header)


def _check_object(raw: bytes, what: str) -> None:
    # A kernel drops a message whose frames are not JSON objects; answering the
    # client is kinder. The first byte is enough to refuse most garbage cheaply.
    stripped = raw.lstrip()
    if not stripped.startswith(b"{"):
        raise MessageError(f"{what} is not a JSON object")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise MessageError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise MessageError(f"{what} is not a JSON object")


# -- legacy -------------------------------------------------------------------------


def decode_legacy(data: str | bytes) -> Incoming:
    """Parse a legacy text frame (JSON) or legacy binary frame (with buffers)."""
    buffers: list[bytes] = []
    if isinstance(data, str):
        text: str | bytes = data
    else:
        text, buffers = _split_legacy_binary(data)
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise MessageError(f"not valid JSON: {e}") from None
    if not isinstance(msg, dict):
        raise MessageError("a message must be a JSON object")
    header = msg.get("header")
    if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str):
        raise MessageError("header is not an object with a string msg_type")
    parent = msg.get("parent_header") or {}
    metadata = msg.get("metadata") or {}
    content = msg.get("content") or {}
    for value, what in ((parent, "parent_header"), (metadata, "metadata"), (content, "content")):
        if not isinstance(value, dict):
            raise MessageError(f"{what} is not a JSON object")
    parts = [pack(header), pack(parent), pack(metadata), pack(content), *buffers]
    return Incoming(_channel(msg.get("channel")), parts, header)


def _split_legacy_binary(data: bytes) -> tuple[bytes, list[bytes]]:
    if len(data) < _U32:
        raise MessageError("binary frame shorter than its buffer count")
    (n,) = struct.unpack_from("!I", data)
    if n < 1 or n > _MAX_PARTS or len(data) < _U32 * (1 + n):
        raise MessageError(f"binary frame with a bad buffer count ({n})")
    offsets = [*struct.unpack_from(f"!{n}I", data, _U32), len(data)]
    if offsets[0] < _U32 * (1 + n) or any(b < a for a, b in itertools.pairwise(offsets)):
        raise MessageError("binary frame offsets are out of order or out of the frame")
    bufs = [data[a:b] for a, b in itertools.pairwise(offsets)]
    return bufs[0], bufs[1:]


def encode_legacy(channel: str, parts: Sequence[bytes], header: Any = None) -> str | bytes:
    """A legacy frame for ``parts``: a JSON text, or a binary frame when there are buffers.

    The JSON frames are spliced in as they are (they come signed from the
    kernel, so they are JSON); only ``msg_id`` and ``msg_type`` are read from
    the header (``header``, if the caller has already parsed it).
    """
    if header is None:
        header = parse_header(parts[0])
    ids = json.dumps(header.get("msg_id", "")), json.dumps(header.get("msg_type", ""))
    head = b"".join(
        (
            b'{"header":',
            parts[0],
            b',"msg_id":',
            ids[0].encode(),
            b',"msg_type":',
            ids[1].encode(),
            b',"parent_header":',
            parts[1],
            b',"metadata":',
            parts[2],
            b',"content":',
            parts[3],
            b',"channel":"',
            channel.encode("ascii"),
            b'"',
        )
    )
    buffers = parts[4:]
    if not buffers:
        return (head + b',"buffers":[]}').decode("utf-8", "replace")
    blobs = [head + b"}", *buffers]
    offsets = [_U32 * (1 + len(blobs))]
    for b in blobs[:-1]:
        offsets.append(offsets[-1] + len(b))
    return struct.pack(f"!{len(blobs) + 1}I", len(blobs), *offsets) + b"".join(blobs)


def message_parts(msg: dict[str, Any]) -> list[bytes]:
    """The parts of a message dict (one the gateway makes itself, e.g. a status)."""
    return [
        pack(msg["header"]),
        pack(msg.get("parent_header") or {}),
        pack(msg.get("metadata") or {}),
        pack(msg.get("content") or {}),
        *(bytes(b) for b in msg.get("buffers") or ()),
    ]

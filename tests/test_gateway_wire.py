"""The gateway's wire formats against jupyter_server's own (de)serializers."""

from __future__ import annotations

import json
import struct

import pytest
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

from kernelkeeper.errors import MessageError
from kernelkeeper.gateway_wire import (
    decode_legacy,
    decode_v1,
    encode_legacy,
    encode_v1,
    message_parts,
)

HEADER = {
    "msg_id": "m1",
    "msg_type": "execute_request",
    "session": "s",
    "username": "u",
    "date": "2026-12-01T00:00:00.000000Z",
    "version": "5.3",
}
MSG = {
    "header": HEADER,
    "parent_header": {"msg_id": "p0"},
    "metadata": {"k": 1},
    "content": {"code": "print('é')"},
}


def parts(buffers: list[bytes] | None = None) -> list[bytes]:
    return message_parts({**MSG, "buffers": buffers or []})


@pytest.mark.parametrize("buffers", [[], [b"\x00\x01", b"", b"x" * 1000]])
def test_v1_encode_is_what_jupyter_server_decodes(buffers: list[bytes]) -> None:
    channel, msg_list = deserialize_msg_from_ws_v1(encode_v1("shell", parts(buffers)))
    assert channel == "shell"
    assert msg_list == parts(buffers)


@pytest.mark.parametrize("buffers", [[], [b"abc", b"\xff" * 10]])
def test_v1_decode_reads_what_jupyter_server_encodes(buffers: list[bytes]) -> None:
    frame = serialize_msg_to_ws_v1(parts(buffers), "control")
    inc = decode_v1(frame)
    assert inc.channel == "control"
    assert inc.parts == parts(buffers)  # the zmq frames, untouched
    assert inc.msg_type == "execute_request"


def test_v1_offsets_are_little_endian_u64() -> None:
    frame = encode_v1("iopub", parts())
    (n,) = struct.unpack_from("<Q", frame)
    assert n == 6
    first = struct.unpack_from("<Q", frame, 8)[0]
    assert first == 8 * 7
    assert frame[first : first + 5] == b"iopub"


def test_legacy_json_matches_jupyter_server_fields() -> None:
    text = encode_legacy("iopub", parts())
    assert isinstance(text, str)
    d = json.loads(text)
    assert d["channel"] == "iopub"
    assert d["header"] == HEADER
    assert d["msg_id"] == "m1" and d["msg_type"] == "execute_request"
    assert d["parent_header"] == MSG["parent_header"]
    assert d["metadata"] == {"k": 1}
    assert d["content"] == {"code": "print('é')"}
    assert d["buffers"] == []


def test_legacy_binary_is_big_endian_and_jupyter_server_reads_it() -> None:
    bufs = [b"\x00" * 3, b"hello"]
    data = encode_legacy("iopub", parts(bufs))
    assert isinstance(data, bytes)
    assert struct.unpack_from("!I", data)[0] == 3
    msg = deserialize_binary_message(data)
    assert [bytes(b) for b in msg["buffers"]] == bufs
    assert msg["channel"] == "iopub"
    assert msg["content"] == MSG["content"]


def test_legacy_decode_reads_jupyter_server_binary_and_json() -> None:
    bufs = [b"\x01\x02", b"zz"]
    blob = serialize_binary_message({**MSG, "channel": "shell", "buffers": bufs})
    inc = decode_legacy(blob)
    assert inc.channel == "shell"
    assert inc.parts[4:] == bufs
    assert json.loads(inc.parts[3]) == MSG["content"]
    inc = decode_legacy(json.dumps({**MSG, "channel": "stdin"}))
    assert inc.channel == "stdin" and len(inc.parts) == 4


def test_no_channel_means_shell() -> None:
    assert decode_legacy(json.dumps(MSG)).channel == "shell"


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        json.dumps({**MSG, "header": {"msg_id": "x"}}),
        json.dumps({**MSG, "content": [1]}),
        json.dumps({**MSG, "channel": "hb"}),
        json.dumps({**MSG, "channel": 7}),
        b"\x00",
        struct.pack("!I", 0),
        struct.pack("!II", 1, 2),  # offset inside the table
        struct.pack("!II", 2, 12),  # more buffers than offsets
    ],
)
def test_legacy_garbage_is_a_message_error(frame: str | bytes) -> None:
    with pytest.raises(MessageError):
        decode_legacy(frame)


def _v1(offsets: list[int], tail: bytes = b"") -> bytes:
    return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + tail


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x01\x00",
        _v1([0, 0, 0, 0, 0, 0]),  # offsets inside the table
        _v1([56, 60, 58, 58, 58, 58], b"x" * 10),  # out of order
        _v1([56, 61, 62, 63, 64, 10**9], b"x" * 10),  # past the end
        struct.pack("<Q", 1 << 40),  # absurd count
        encode_v1("shell", [b"not json", b"{}", b"{}", b"{}"]),
        encode_v1("shell", [json.dumps(HEADER).encode(), b"[]", b"{}", b"{}"]),
        encode_v1("nope", parts()),
        b"\x06" + b"\x00" * 7 + struct.pack("<6Q", 56, 58, 58, 58, 58, 58) + b"\xff\xfe",
    ],
)
def test_v1_garbage_is_a_message_error(frame: bytes) -> None:
    with pytest.raises(MessageError):
        decode_v1(frame)

"""Fuzzing the three parsers of untrusted input: wire messages, connection files,
kernel.json files.

Each must either return a well-formed value or raise its own typed error,
nothing else, whatever it is fed. The suite runs a short pass (a few seconds);
a long one runs with ``KK_FUZZ_EXAMPLES`` set::

    KK_FUZZ_EXAMPLES=200000 .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kernelkeeper.connection import CHANNELS, ConnectionInfo
from kernelkeeper.errors import ConnectionFileError, KernelSpecError, MessageError
from kernelkeeper.kernelspec import KernelSpec, check_executable
from kernelkeeper.session import DELIM, Session

KEY = b"fuzz-key-0123456789abcdef"

_EXAMPLES = int(os.environ.get("KK_FUZZ_EXAMPLES") or 0)
settings.register_profile(
    "kk-fuzz-short", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "kk-fuzz-long",
    max_examples=max(_EXAMPLES, 1),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
# A long run takes as long as it takes: no per-test timeout then.
pytestmark = [pytest.mark.timeout(0)] if _EXAMPLES else []
# Applied per test rather than loaded, so the other modules' hypothesis tests
# keep their own settings.
FUZZ = settings(settings.get_profile("kk-fuzz-long" if _EXAMPLES else "kk-fuzz-short"))

# -- strategies ---------------------------------------------------------------------------------

text = st.text(max_size=12)  # lone surrogates included: JSON can carry them as \ud800 escapes
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(text, kids, max_size=4),
    max_leaves=10,
)
ROUTED = ("msg_id", "msg_type", "session")
routed_values = st.sampled_from(["", "x", "execute_reply"]) | json_values


def header_like() -> st.SearchStrategy[Any]:
    """Mostly objects with the routed keys present, holding anything."""
    near = st.fixed_dictionaries(
        {},
        optional={name: routed_values for name in (*ROUTED, "date", "username", "version")},
    )
    return near | json_values


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


def _signed(
    session: Session, parts: list[bytes], idents: list[bytes], buffers: list[bytes]
) -> list[bytes]:
    return [*idents, DELIM, session.sign(parts), *parts, *buffers]


def _acceptable(header: Any, parent: Any, metadata: Any, content: Any) -> bool:
    """What feed() must accept, stated independently of Session."""
    if not all(isinstance(x, dict) for x in (header, parent, metadata, content)):
        return False
    if not isinstance(header.get("msg_type"), str):
        return False
    if not all(isinstance(header.get(n, ""), str) for n in ROUTED):
        return False
    return all(parent.get(n) is None or isinstance(parent.get(n), str) for n in ROUTED)


def _check_routed(msg: dict[str, Any]) -> None:
    """The fields the client routes on have the types it relies on."""
    assert isinstance(msg["header"], dict) and isinstance(msg["parent_header"], dict)
    assert isinstance(msg["metadata"], dict) and isinstance(msg["content"], dict)
    assert isinstance(msg["msg_type"], str) and isinstance(msg["msg_id"], str)
    assert msg["msg_type"] == msg["header"]["msg_type"]
    parent_id = msg["parent_header"].get("msg_id")
    assert parent_id is None or isinstance(parent_id, str)
    hash(parent_id)  # used as a dict key by the receive loop
    assert all(isinstance(b, bytes) for b in msg["buffers"])


# -- wire messages ------------------------------------------------------------------------------


@FUZZ
@given(
    frames=st.lists(
        st.binary(max_size=40) | st.sampled_from([DELIM, b"{}", b'{"msg_type":"x"}', b""]),
        max_size=10,
    ),
    key=st.sampled_from([KEY, b""]),
)
def test_feed_arbitrary_frames(frames: list[bytes], key: bytes) -> None:
    session = Session(key)
    msg = session.feed(frames)
    if msg is not None:
        _check_routed(msg)
    else:
        assert session.dropped_total == 1


@FUZZ
@given(
    header=header_like(),
    parent=header_like(),
    metadata=json_values,
    content=json_values,
    idents=st.lists(st.binary(max_size=8).filter(lambda b: b != DELIM), max_size=2),
    buffers=st.lists(st.binary(max_size=8), max_size=2),
)
def test_feed_validly_signed_arbitrary_json(
    header: Any, parent: Any, metadata: Any, content: Any, idents: list[bytes], buffers: list[bytes]
) -> None:
    """The signature holds, so only the structural checks stand between these and the client."""
    signer = Session(KEY)
    parts = [_dumps(header), _dumps(parent), _dumps(metadata), _dumps(content)]
    receiver = Session(KEY)
    msg = receiver.feed(_signed(signer, parts, idents, buffers))
    expected = _acceptable(*(json.loads(p.decode("utf-8", "surrogatepass")) for p in parts))
    try:
        for p in parts:
            p.decode("utf-8")  # a lone surrogate is not UTF-8: dropped as malformed
    except UnicodeDecodeError:
        expected = False
    if expected:
        assert msg is not None, dict(receiver.dropped)
        _check_routed(msg)
        assert Session(KEY).deserialize(_signed(signer, parts, idents, buffers))[0] == idents
    else:
        assert msg is None
        assert receiver.dropped_total == 1
        with pytest.raises(MessageError):
            Session(KEY).deserialize(_signed(signer, parts, idents, buffers))


@FUZZ
@given(parts=st.lists(st.binary(max_size=30), min_size=4, max_size=4))
def test_feed_validly_signed_arbitrary_bytes(parts: list[bytes]) -> None:
    signer, receiver = Session(KEY), Session(KEY)
    msg = receiver.feed(_signed(signer, parts, [], []))
    if msg is not None:
        _check_routed(msg)


@FUZZ
@given(content=json_values, metadata=st.dictionaries(text, json_values, max_size=3))
def test_round_trip_of_what_we_send(content: Any, metadata: dict[str, Any]) -> None:
    """Whatever JSON content we can send parses back as a well-typed message."""
    a, b = Session(KEY), Session(KEY)
    msg = a.msg("comm_msg", {"data": content}, metadata=metadata)
    try:
        frames = a.serialize(msg)
    except (UnicodeEncodeError, ValueError):
        return  # lone surrogates cannot be sent as UTF-8 (as in jupyter_client)
    got = b.feed(frames)
    assert got is not None
    _check_routed(got)


# -- connection files -------------------------------------------------------------------------

GOOD_CONN: dict[str, Any] = {
    "transport": "tcp",
    "ip": "127.0.0.1",
    **{f"{ch}_port": 50000 + i for i, ch in enumerate(CHANNELS)},
    "key": "k" * 64,
    "signature_scheme": "hmac-sha256",
    "kernel_name": "python3",
}
CONN_FIELDS = [*GOOD_CONN, "curve_publickey", "curve_secretkey"]


@st.composite
def near_connection_dicts(draw: st.DrawFn) -> Any:
    """A good connection dict with a few fields replaced, dropped or added."""
    d = dict(GOOD_CONN)
    for name in draw(st.lists(st.sampled_from(CONN_FIELDS), max_size=3)):
        if draw(st.booleans()):
            d.pop(name, None)
        else:
            d[name] = draw(
                json_values
                | st.integers(min_value=-1, max_value=70000)
                | st.text(alphabet="0123456789abcdefZ:.-", min_size=38, max_size=41)
            )
    return d


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="kk-fuzz-"))
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _check_conn(info: ConnectionInfo) -> None:
    assert info.transport in ("tcp", "ipc")
    assert isinstance(info.ip, str) and info.ip
    assert all(isinstance(p, int) and 0 <= p <= 65535 for p in info.ports.values())
    assert isinstance(info.key, bytes)
    assert ConnectionInfo.from_dict(info.to_dict()) == info  # what we accept we can write


@FUZZ
@given(data=near_connection_dicts() | json_values)
def test_connection_from_dict(data: Any) -> None:
    try:
        info = ConnectionInfo.from_dict(data)
    except ConnectionFileError as e:
        assert "k" * 64 not in str(e)  # the key never appears in a message
        return
    _check_conn(info)


@FUZZ
@given(data=near_connection_dicts() | json_values | st.binary(max_size=200))
def test_connection_from_file(scratch: Path, data: Any) -> None:
    path = scratch / "conn.json"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_bytes(_dumps(data))
    path.chmod(0o600)
    try:
        info = ConnectionInfo.from_file(path)
    except ConnectionFileError as e:
        assert e.path == str(path)
        assert "k" * 64 not in str(e)
        return
    _check_conn(info)
    assert info.has_ports  # a file needs real ports


# -- kernel.json --------------------------------------------------------------------------------

GOOD_SPEC: dict[str, Any] = {
    "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python",
    "language": "python",
    "env": {"A": "1"},
    "interrupt_mode": "signal",
    "metadata": {"debugger": True},
}


# argv[0] candidates that send check_executable down each of its paths.
paths = st.sampled_from(["/", "/bin/sh", "sh", "python", "{resource_dir}/run", "./x", ""]) | (
    st.builds(lambda a: "/" + a, text)
)


@st.composite
def near_spec_dicts(draw: st.DrawFn) -> Any:
    d = dict(GOOD_SPEC)
    for name in draw(st.lists(st.sampled_from(list(GOOD_SPEC)), max_size=3)):
        if draw(st.booleans()):
            d.pop(name, None)
        else:
            d[name] = draw(
                json_values
                | st.lists(text | paths, min_size=1, max_size=3)
                | st.dictionaries(text, text, max_size=2)
                | st.sampled_from(["signal", "message"])
            )
    return d


def _check_spec(spec: KernelSpec) -> None:
    assert spec.argv and all(isinstance(a, str) for a in spec.argv)
    assert spec.interrupt_mode in ("signal", "message")
    assert KernelSpec.from_dict(spec.to_dict(), name=spec.name) == KernelSpec(
        **{**spec.to_dict(), "argv": tuple(spec.argv), "name": spec.name}
    )
    try:
        check_executable(spec)  # touches the filesystem with argv[0]: only its own error
    except KernelSpecError:
        pass


@FUZZ
@given(data=near_spec_dicts() | json_values)
def test_kernelspec_from_dict(data: Any) -> None:
    try:
        spec = KernelSpec.from_dict(data, name="fuzz", path="/fuzz/kernel.json")
    except KernelSpecError as e:
        assert e.path == "/fuzz/kernel.json"
        return
    _check_spec(spec)


@FUZZ
@given(data=near_spec_dicts() | json_values | st.binary(max_size=200))
def test_kernelspec_from_resource_dir(scratch: Path, data: Any) -> None:
    rd = scratch / "fuzzkernel"
    rd.mkdir(exist_ok=True)
    raw = data if isinstance(data, bytes) else _dumps(data)
    (rd / "kernel.json").write_bytes(raw)
    try:
        spec = KernelSpec.from_resource_dir(rd)
    except KernelSpecError as e:
        assert e.path == str(rd / "kernel.json")
        return
    assume(spec.name == "fuzzkernel")
    _check_spec(spec)

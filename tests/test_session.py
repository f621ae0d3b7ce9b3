"""Unit and property tests of the wire protocol (kernelkeeper.session).

Connection info and connection files: tests/test_connection_files.py.

No kernel is needed here: these are pure functions over bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelkeeper.errors import MessageError
from kernelkeeper.session import DELIM, PROTOCOL_VERSION, Session, pack

KEY = b"0123456789abcdef0123456789abcdef"

# -- strategies ----------------------------------------------------------------

# Lone surrogates cannot be encoded to UTF-8 (jupyter_client behaves the same).
json_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(json_text, json_values, max_size=5)
frames_st = st.binary(max_size=64)
idents_st = st.lists(frames_st.filter(lambda b: b != DELIM), max_size=3)


def hmac_ok(key: bytes, frames: list[bytes]) -> bool:
    """Independent check: do the frames after the first delimiter carry a valid signature?"""
    if DELIM not in frames:
        return False
    rest = frames[frames.index(DELIM) + 1 :]
    if len(rest) < 5:
        return False
    expected = hmac.new(key, b"".join(rest[1:5]), hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, rest[0])


def sample(session: Session, **content: Any) -> dict[str, Any]:
    return session.msg("execute_request", {"code": "1+1", **content})


# -- Session: building and round trips -------------------------------------------


def test_msg_shape_and_header() -> None:
    s = Session(KEY, username="alice")
    parent = s.msg("kernel_info_request")
    m = s.msg("execute_request", {"code": "x"}, parent=parent, metadata={"m": 1})
    h = m["header"]
    assert set(h) == {"msg_id", "msg_type", "username", "session", "date", "version"}
    assert h["msg_type"] == m["msg_type"] == "execute_request"
    assert h["msg_id"] == m["msg_id"] and len(h["msg_id"]) == 32
    assert h["username"] == "alice" and h["session"] == s.session
    assert h["version"] == PROTOCOL_VERSION
    assert h["date"].tzinfo is not None
    assert m["parent_header"] == parent["header"]
    assert m["content"] == {"code": "x"} and m["metadata"] == {"m": 1} and m["buffers"] == []
    assert s.msg("a")["msg_id"] != s.msg("a")["msg_id"]


def test_round_trip_all_parts_with_identities_and_buffers() -> None:
    a, b = Session(KEY), Session(KEY)
    parent = a.msg("kernel_info_request")
    m = a.msg(
        "execute_reply",
        {"status": "ok", "n": [1, 2.5, None, "é"]},
        parent=parent,
        metadata={"k": True},
    )
    m["buffers"] = [b"\x00\x01raw", memoryview(b"view"), bytearray(b"ba")]
    frames = a.serialize(m, ident=[b"id-1", b"id-2"])
    assert frames[:3] == [b"id-1", b"id-2", DELIM]
    assert all(isinstance(f, bytes) for f in frames)
    idents, got = b.deserialize(frames)
    assert idents == [b"id-1", b"id-2"]
    assert got["header"] == m["header"]
    assert got["msg_id"] == m["msg_id"] and got["msg_type"] == "execute_reply"
    assert got["parent_header"] == parent["header"]
    assert got["metadata"] == {"k": True}
    assert got["content"] == {"status": "ok", "n": [1, 2.5, None, "é"]}
    assert got["buffers"] == [b"\x00\x01raw", b"view", b"ba"]


def test_single_bytes_identity() -> None:
    s = Session(KEY)
    idents, _ = s.deserialize(s.serialize(sample(s), ident=b"solo"))
    assert idents == [b"solo"]


def test_dates_parsed_to_aware_datetimes() -> None:
    a, b = Session(KEY), Session(KEY)
    parent = a.msg("execute_request")
    m = a.msg("execute_reply", {}, parent=parent)
    naive = dt.datetime(2024, 5, 6, 7, 8, 9, 123456)
    m["header"]["date"] = naive  # naive datetimes are taken as UTC
    _, got = b.deserialize(a.serialize(m))
    d = got["header"]["date"]
    assert isinstance(d, dt.datetime) and d.tzinfo is not None
    assert d == naive.replace(tzinfo=dt.timezone.utc)
    pd = got["parent_header"]["date"]
    assert isinstance(pd, dt.datetime) and pd.tzinfo is not None
    assert pd == parent["header"]["date"]
    # On the wire the date is ISO 8601 text ending in Z, as jupyter_client writes it.
    assert json.loads(a.serialize(m)[2])["date"] == "2024-05-06T07:08:09.123456Z"


def test_offset_date_from_other_writers_is_kept_aware() -> None:
    s = Session(KEY)
    m = sample(s)
    m["header"]["date"] = "2024-01-02T03:04:05.000006+02:00"
    _, got = Session(KEY).deserialize(s.serialize(m))
    assert got["header"]["date"] == dt.datetime(2024, 1, 2, 1, 4, 5, 6, tzinfo=dt.timezone.utc)
    m["header"]["date"] = "not a date"
    _, got = Session(KEY).deserialize(s.serialize(m))
    assert got["header"]["date"] == "not a date"


@pytest.mark.parametrize("scheme", ["hmac-sha256", "hmac-sha512", "hmac-sha1", "hmac-md5"])
def test_signature_schemes(scheme: str) -> None:
    a = Session(KEY, scheme)
    frames = a.serialize(sample(a))
    digest = getattr(hashlib, scheme.split("-")[1])
    assert frames[1] == hmac.new(KEY, b"".join(frames[2:6]), digest).hexdigest().encode()
    _, got = Session(KEY, scheme).deserialize(frames)
    assert got["content"]["code"] == "1+1"
    other = "hmac-sha384" if scheme != "hmac-sha384" else "hmac-sha256"
    with pytest.raises(MessageError, match="invalid signature"):
        Session(KEY, other).deserialize(frames)


def test_unknown_scheme_rejected() -> None:
    with pytest.raises(MessageError):
        Session(KEY, "hmac-rot13")


def test_str_key_is_accepted() -> None:
    s = Session(KEY.decode())
    assert s.key == KEY
    _, got = Session(KEY).deserialize(s.serialize(sample(s)))
    assert got["msg_type"] == "execute_request"


def test_repr_hides_key() -> None:
    s = Session(KEY)
    assert KEY.decode() not in repr(s) and "signed=True" in repr(s)
    assert "signed=False" in repr(Session(b""))


# -- Session: verification ---------------------------------------------------------


@pytest.mark.parametrize(
    "index", [1, 2, 3, 4, 5], ids=["sig", "header", "parent", "meta", "content"]
)
def test_tampering_any_signed_frame_is_rejected(index: int) -> None:
    s = Session(KEY)
    parent = s.msg("kernel_info_request")
    frames = s.serialize(s.msg("execute_request", {"code": "a"}, parent=parent, metadata={"x": 1}))
    assert frames[0] == DELIM
    tampered = list(frames)
    f = tampered[index]
    # Flip one character in the middle (keeps it valid JSON where possible).
    mid = len(f) // 2
    tampered[index] = f[:mid] + bytes([f[mid] ^ 0x01]) + f[mid + 1 :]
    assert tampered[index] != f
    with pytest.raises(MessageError, match="invalid signature"):
        Session(KEY).deserialize(tampered)
    # The pristine frames still verify (with a fresh session: no replay state).
    Session(KEY).deserialize(frames)


def test_tampered_content_value_is_rejected() -> None:
    s = Session(KEY)
    frames = s.serialize(s.msg("execute_request", {"code": "print(1)"}))
    frames[5] = pack({"code": "import os; os.system('rm -rf /')"})
    with pytest.raises(MessageError, match="invalid signature"):
        Session(KEY).deserialize(frames)


def test_wrong_key_rejected() -> None:
    s = Session(b"not-the-key")
    with pytest.raises(MessageError, match="invalid signature"):
        Session(KEY).deserialize(s.serialize(sample(s)))


def test_missing_signature_with_key_rejected() -> None:
    unsigned = Session(b"")
    frames = unsigned.serialize(sample(unsigned))
    assert frames[1] == b""
    with pytest.raises(MessageError, match="unsigned"):
        Session(KEY).deserialize(frames)


def test_empty_key_unsigned_works() -> None:
    a, b = Session(b""), Session(b"")
    frames = a.serialize(sample(a))
    assert frames[1] == b""
    _, got = b.deserialize(frames)
    assert got["content"]["code"] == "1+1"
    # Without a key nothing is verified (as in Jupyter): a signed message parses too,
    # and the same frames twice are not a replay.
    signed = Session(KEY)
    b.deserialize(signed.serialize(sample(signed)))
    b.deserialize(frames)
    assert b.dropped_total == 0


def test_replay_rejected() -> None:
    a, b = Session(KEY), Session(KEY)
    frames = a.serialize(sample(a))
    b.deserialize(frames)
    with pytest.raises(MessageError, match="replay"):
        b.deserialize(frames)
    # The same message with different identities is still a replay.
    with pytest.raises(MessageError, match="replay"):
        b.deserialize([b"other-peer", *frames])
    assert b.feed(frames) is None
    assert b.dropped["duplicate signature (replayed message)"] == 1
    # A new message from the same sender is fine.
    b.deserialize(a.serialize(sample(a)))
    # Replay checking can be turned off.
    c = Session(KEY, check_replay=False)
    c.deserialize(frames)
    c.deserialize(frames)


def test_replay_memory_is_bounded() -> None:
    a, b = Session(KEY), Session(KEY)
    b._seen_max = 3
    first = a.serialize(sample(a))
    b.deserialize(first)
    for _ in range(3):
        b.deserialize(a.serialize(sample(a)))
    assert len(b._seen) == len(b._seen_set) == 3
    # The oldest signature was forgotten: the memory does not grow without bound.
    b.deserialize(first)


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([], "no delimiter"),
        ([b"just garbage"], "no delimiter"),
        ([DELIM], "too few frames"),
        ([b"id", DELIM, b"sig", b"{}", b"{}", b"{}"], "too few frames"),
    ],
)
def test_structurally_bad_frames(frames: list[bytes], reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        Session(KEY).deserialize(frames)


def _signed(s: Session, parts: list[bytes]) -> list[bytes]:
    return [DELIM, s.sign(parts), *parts]


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([b"{not json", b"{}", b"{}", b"{}"], "malformed JSON"),
        ([pack({"msg_type": "x"}), b"{}", b"{}", b"\xff\xfe"], "malformed JSON"),
        ([pack({"msg_id": "x"}), b"{}", b"{}", b"{}"], "msg_type"),
        ([pack(["msg_type"]), b"{}", b"{}", b"{}"], "msg_type"),
        ([pack({"msg_type": "x"}), b"[]", b"{}", b"{}"], "parent_header and metadata"),
        ([pack({"msg_type": "x"}), b"{}", b"3", b"{}"], "parent_header and metadata"),
        ([pack({"msg_type": "x"}), b"{}", b"{}", b'"text"'], "content must be an object"),
        # Routed fields that are not strings: a list parent msg_id used to raise
        # TypeError (unhashable) inside the client's receive loop.
        ([pack({"msg_type": "x"}), pack({"msg_id": ["a"]}), b"{}", b"{}"], "bad parent_header"),
        ([pack({"msg_type": "x"}), pack({"msg_id": {"a": 1}}), b"{}", b"{}"], "bad parent"),
        ([pack({"msg_type": "x"}), pack({"msg_type": 3}), b"{}", b"{}"], "bad parent_header"),
        ([pack({"msg_type": "x", "msg_id": ["a"]}), b"{}", b"{}", b"{}"], "bad header"),
        ([pack({"msg_type": "x", "msg_id": None}), b"{}", b"{}", b"{}"], "bad header"),
        ([pack({"msg_type": "x", "session": 5}), b"{}", b"{}", b"{}"], "bad header"),
    ],
)
def test_validly_signed_but_malformed(parts: list[bytes], reason: str) -> None:
    s = Session(KEY)
    with pytest.raises(MessageError, match=reason):
        Session(KEY).deserialize(_signed(s, parts))
    # feed() drops it instead, and counts it under its reason.
    r = Session(KEY)
    assert r.feed(_signed(s, parts)) is None
    assert r.dropped_total == 1
    assert any(reason.split()[0] in k for k in r.dropped)


def test_routed_fields_may_be_absent_or_null_in_parent() -> None:
    s = Session(KEY)
    for parent in ({}, {"msg_id": None}, {"msg_id": "p", "msg_type": "x", "session": "s"}):
        got = Session(KEY).feed(_signed(s, [pack({"msg_type": "x"}), pack(parent), b"{}", b"{}"]))
        assert got is not None
        assert got["msg_id"] == ""  # a header without msg_id still parses, as before


def test_json_default_does_not_truncate_rationals_and_decimals() -> None:
    from decimal import Decimal
    from fractions import Fraction

    got = json.loads(
        pack(
            {
                "half": Fraction(1, 2),
                "dec": Decimal("2.5"),
                "whole": Fraction(4, 2),
                "big": Fraction(10**30, 1),
                "t": (1, 2),
            }
        )
    )
    assert got == {"half": 0.5, "dec": 2.5, "whole": 2, "big": 10**30, "t": [1, 2]}
    assert isinstance(got["whole"], int) and isinstance(got["half"], float)
    with pytest.raises(TypeError):
        pack({"huge": Fraction(10**400, 3)})  # no float can hold it
    with pytest.raises(TypeError):
        pack({"obj": object()})


def test_json_default_numpy_like_scalars() -> None:
    """Scalars that only speak __index__ / __float__ (numpy's shape) keep their kind."""

    class Int:
        def __index__(self) -> int:
            return 7

        def __float__(self) -> float:
            return 7.0

    class Flt:
        def __float__(self) -> float:
            return 2.25

    got = json.loads(pack([Int(), Flt(), float("nan"), float("inf")]))
    assert got[:2] == [7, 2.25]
    assert isinstance(got[0], int)
    assert got[2] != got[2] and got[3] == float("inf")  # NaN/inf as before (json's NaN)


def test_feed_counts_drops_by_reason() -> None:
    a, b = Session(KEY), Session(KEY)
    good = a.serialize(sample(a))
    forged = Session(b"evil").serialize(sample(Session(b"evil")))
    assert b.feed([b"garbage"]) is None
    assert b.feed(forged) is None
    assert b.feed([DELIM, b"", b"{}", b"{}", b"{}", b"{}"]) is None
    msg = b.feed(good)
    assert msg is not None and msg["content"]["code"] == "1+1"
    assert b.feed(good) is None  # replay
    assert b.dropped == {
        "no delimiter frame": 1,
        "invalid signature": 1,
        "unsigned message": 1,
        "duplicate signature (replayed message)": 1,
    }
    assert b.dropped_total == 4


def test_feed_survives_non_bytes_frames() -> None:
    s = Session(KEY)
    assert s.feed([object()]) is None  # type: ignore[list-item]
    assert s.feed(None) is None  # type: ignore[arg-type]
    assert s.dropped_total == 2


# -- Session: property tests ---------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=json_objects,
    metadata=json_objects,
    idents=idents_st,
    buffers=st.lists(st.binary(max_size=32), max_size=3),
    key=st.sampled_from([b"", KEY]),
)
def test_round_trip_property(
    content: dict[str, Any],
    metadata: dict[str, Any],
    idents: list[bytes],
    buffers: list[bytes],
    key: bytes,
) -> None:
    a, b = Session(key), Session(key)
    m = a.msg("comm_msg", content, parent=a.msg("execute_request"), metadata=metadata)
    m["buffers"] = buffers
    got_idents, got = b.deserialize(a.serialize(m, ident=idents))
    assert got_idents == idents
    assert got["content"] == content
    assert got["metadata"] == metadata
    assert got["buffers"] == buffers
    assert got["header"] == m["header"]


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(
        frames_st | st.just(DELIM) | frames_st.map(lambda b: b[:3] + DELIM + b[3:]), max_size=10
    ),
    key=st.sampled_from([KEY, b"other"]),
)
def test_feed_never_raises_on_arbitrary_frames(frames: list[bytes], key: bytes) -> None:
    s = Session(key)
    before = s.dropped_total
    msg = s.feed(frames)
    if msg is None:
        assert s.dropped_total == before + 1
    else:  # pragma: no cover - needs a forged HMAC
        assert hmac_ok(key, frames)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    extra_idents=idents_st,
)
def test_mutated_valid_message_only_accepted_if_signature_still_holds(
    data: st.DataObject, extra_idents: list[bytes]
) -> None:
    """Start from a valid signed message and mangle it at random: insert, drop,
    replace or corrupt frames (the delimiter included). feed() never raises and
    returns a message only when the signed part is still intact."""
    sender = Session(KEY)
    m = sender.msg(
        "stream", {"name": "stdout", "text": data.draw(json_text)}, parent=sender.msg("x")
    )
    m["buffers"] = data.draw(st.lists(st.binary(max_size=8), max_size=2))
    frames = sender.serialize(m, ident=extra_idents)
    original = list(frames)
    for _ in range(data.draw(st.integers(0, 4))):
        op = data.draw(st.sampled_from(["insert", "delete", "replace", "flip", "delim"]))
        pos = data.draw(st.integers(0, len(frames)))
        if op == "insert":
            frames.insert(pos, data.draw(frames_st))
        elif op == "delim":
            frames.insert(pos, DELIM)
        elif frames and pos < len(frames):
            if op == "delete":
                del frames[pos]
            elif op == "replace":
                frames[pos] = data.draw(frames_st)
            elif frames[pos]:
                i = data.draw(st.integers(0, len(frames[pos]) - 1))
                f = frames[pos]
                frames[pos] = f[:i] + bytes([f[i] ^ data.draw(st.integers(1, 255))]) + f[i + 1 :]
    receiver = Session(KEY)
    got = receiver.feed(frames)
    if got is None:
        assert receiver.dropped_total == 1
    else:
        assert hmac_ok(KEY, frames)
        # A valid signature means the signed frames are the sender's, unchanged.
        i = frames.index(DELIM)
        assert frames[i + 1 : i + 6] == original[original.index(DELIM) + 1 :][:5]
        assert got["msg_id"] == m["msg_id"]
    if frames == original:
        assert got is not None

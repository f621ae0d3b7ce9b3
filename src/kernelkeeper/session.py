"""The Jupyter wire protocol: build, sign, serialize, verify and parse messages.

Pure functions and a small :class:`Session` object over bytes; no sockets.
A wire message is a list of frames::

    [identities..., b"<IDS|MSG>", signature, header, parent_header, metadata, content, buffers...]

The signature is the hex HMAC of the four JSON frames with the connection
file's key and scheme (``hmac-sha256`` by default). An empty key disables
signing, as in Jupyter.
"""

from __future__ import annotations

import base64
import collections
import datetime as _dt
import getpass
import hashlib
import hmac
import itertools
import json
import json.encoder
import logging
import numbers
import operator
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import MessageError

__all__ = ["DELIM", "PROTOCOL_VERSION", "Session", "new_id"]

log = logging.getLogger("kernelkeeper.session")

DELIM = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.4"

_DIGESTS = {
    "hmac-sha256": hashlib.sha256,
    "hmac-sha512": hashlib.sha512,
    "hmac-sha384": hashlib.sha384,
    "hmac-sha224": hashlib.sha224,
    "hmac-sha1": hashlib.sha1,
    "hmac-md5": hashlib.md5,
}

Message = dict[str, Any]

# Header fields receivers route or filter on; a message with a non-string
# in one of them (in its header or its parent's) is dropped.
_ROUTED = ("msg_id", "msg_type", "session")


def new_id() -> str:
    """A new session id (random)."""
    return uuid.uuid4().hex


# Message ids: this process's random half, then a count. Unique like a uuid4
# (the random half is new in every process, a forked child included) at a
# tenth of the cost, which every request pays.
_id_base = os.urandom(8).hex()
_id_count = itertools.count()


def new_msg_id() -> str:
    """A new message id: 32 hex digits, unique across processes."""
    return f"{_id_base}{next(_id_count):016x}"


def _new_id_base() -> None:
    global _id_base
    _id_base = os.urandom(8).hex()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_id_base)


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _is_decimal(obj: Any) -> bool:
    # decimal (~0.4 MiB resident) is not imported for this: an object can only be
    # a Decimal once some code has imported decimal.
    decimal = sys.modules.get("decimal")
    return decimal is not None and isinstance(obj, decimal.Decimal)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, _dt.datetime):
        if obj.tzinfo is None:
            obj = obj.replace(tzinfo=_dt.timezone.utc)
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, _dt.date):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    # numpy scalars and the like. Integers first, but only true integers:
    # int() would silently truncate Fraction(1, 2) or Decimal("2.5") to 0 or 2.
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Rational) and obj.denominator == 1:
        return int(obj.numerator)  # exact, however large
    real = isinstance(obj, numbers.Real) or _is_decimal(obj)
    if not real and hasattr(type(obj), "__index__"):
        return operator.index(obj)  # an integer type not registered as Integral
    if real or hasattr(type(obj), "__float__"):
        try:
            return float(obj)
        except OverflowError:
            raise TypeError(f"{type(obj).__name__} value too large for a JSON number") from None
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# json.dumps builds a JSONEncoder on every call, which costs more than
# encoding a header does; the C encoder is made directly instead. A fresh
# one per call: its circular-reference markers must not be shared (an error
# leaves them behind, and another thread may be encoding the same dict).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_encode_str = json.encoder.encode_basestring  # ensure_ascii=False


def pack(obj: Any) -> bytes:
    """JSON-encode ``obj`` to UTF-8 bytes, the way message frames are written."""
    if not obj and type(obj) is dict:
        return b"{}"
    if _c_make_encoder is not None:
        encode = _c_make_encoder({}, _json_default, _encode_str, None, ":", ",", False, False, True)
        text = "".join(encode(obj, 0))
    else:  # pragma: no cover - json without its C part
        text = json.dumps(obj, default=_json_default, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "surrogateescape")


_decoder = json.JSONDecoder()


def unpack(data: bytes) -> Any:
    """Decode one JSON frame (UTF-8): ValueError if it is not exactly one JSON value."""
    if data == b"{}":
        return {}
    text = data.decode("utf-8")
    try:
        # raw_decode skips json.loads' two whitespace scans; anything
        # unusual (surrounding whitespace, junk, bad JSON) takes json.loads,
        # which accepts or rejects it exactly as before.
        obj, end = _decoder.raw_decode(text)
    except ValueError:
        return json.loads(text)
    return obj if end == len(text) else json.loads(text)


def parse_date(value: Any) -> Any:
    """ISO 8601 text to an aware datetime; anything else is returned unchanged."""
    if not isinstance(value, str):
        return value
    if _FROMISO_Z:
        try:
            d = _dt.datetime.fromisoformat(value)
        except ValueError:
            return value
        return d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        d = _dt.datetime.fromisoformat(text)
    except ValueError:
        return value
    return d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)


# Since 3.11 fromisoformat reads any ISO 8601 text, "Z" included.
_FROMISO_Z = sys.version_info >= (3, 11)


class Session:
    """Signs, serializes and parses messages for one connection key.

    Parsing failures are counted in :attr:`dropped` (by reason) so a receive
    loop can drop a bad message and go on; :meth:`feed` never raises.
    """

    def __init__(
        self,
        key: bytes | str = b"",
        signature_scheme: str = "hmac-sha256",
        *,
        username: str | None = None,
        session_id: str | None = None,
        check_replay: bool = True,
    ) -> None:
        if isinstance(key, str):
            key = key.encode("ascii")
        if signature_scheme not in _DIGESTS:
            raise MessageError(f"Unsupported signature scheme {signature_scheme!r}")
        self.key = key
        self.signature_scheme = signature_scheme
        self._digestmod = _DIGESTS[signature_scheme]
        self._auth = hmac.new(key, digestmod=self._digestmod) if key else None
        self.username = username or _default_username()
        self.session = session_id or new_id()
        self.bsession = self.session.encode("ascii")
        self.check_replay = check_replay
        self._seen: collections.deque[bytes] = collections.deque()
        self._seen_set: set[bytes] = set()
        self._seen_max = 1 << 16
        self.dropped: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:  # never shows the key
        return f"<Session {self.session[:8]} {self.signature_scheme} signed={bool(self.key)}>"

    # -- building -------------------------------------------------------------

    def msg_header(self, msg_type: str) -> dict[str, Any]:
        return {
            "msg_id": new_msg_id(),
            "msg_type": msg_type,
            "username": self.username,
            "session": self.session,
            "date": utcnow(),
            "version": PROTOCOL_VERSION,
        }

    def msg(
        self,
        msg_type: str,
        content: Mapping[str, Any] | None = None,
        parent: Mapping[str, Any] | None = None,
        header: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Message:
        """A new message dict (the jupyter_client ``Session.msg`` shape)."""
        hdr = dict(header) if header is not None else self.msg_header(msg_type)
        parent_header: Any = {}
        if parent:
            parent_header = parent.get("header", parent)
        return {
            "header": hdr,
            "msg_id": hdr["msg_id"],
            "msg_type": hdr["msg_type"],
            "parent_header": dict(parent_header),
            "content": {} if content is None else dict(content),
            "metadata": {} if metadata is None else dict(metadata),
            "buffers": [],
        }

    def sign(self, parts: Sequence[bytes]) -> bytes:
        """The hex HMAC of the four JSON frames (b"" when unsigned)."""
        if self._auth is None:
            return b""
        h = self._auth.copy()
        for p in parts:
            h.update(p)
        return h.hexdigest().encode("ascii")

    def serialize(self, msg: Mapping[str, Any], ident: Sequence[bytes] | bytes = ()) -> list[bytes]:
        """Frames ready for ``send_multipart``."""
        parts = [
            pack(msg["header"]),
            pack(msg.get("parent_header") or {}),
            pack(msg.get("metadata") or {}),
            pack(msg.get("content") or {}),
        ]
        idents = [ident] if isinstance(ident, bytes) else list(ident)
        frames = [*idents, DELIM, self.sign(parts), *parts]
        for buf in msg.get("buffers") or ():
            frames.append(bytes(buf))
        return frames

    # -- parsing --------------------------------------------------------------

    def deserialize(self, frames: Sequence[bytes]) -> tuple[list[bytes], Message]:
        """Verify and parse a wire message; raise :class:`MessageError` if it is bad."""
        frames = [bytes(f) for f in frames]
        try:
            i = frames.index(DELIM)
        except ValueError:
            raise MessageError("no delimiter frame") from None
        idents, rest = frames[:i], frames[i + 1 :]
        if len(rest) < 5:
            raise MessageError(f"too few frames after delimiter ({len(rest)})")
        signature, parts, buffers = rest[0], rest[1:5], rest[5:]
        if self._auth is not None:
            if not signature:
                raise MessageError("unsigned message")
            if not hmac.compare_digest(signature, self.sign(parts)):
                raise MessageError("invalid signature")
            if self.check_replay:
                if signature in self._seen_set:
                    raise MessageError("duplicate signature (replayed message)")
                self._remember(signature)
        try:
            header, parent, metadata, content = (unpack(p) for p in parts)
        except (ValueError, UnicodeDecodeError) as e:
            raise MessageError(f"malformed JSON frame: {e}") from None
        if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str):
            raise MessageError("header is not an object with a msg_type")
        if not isinstance(parent, dict) or not isinstance(metadata, dict):
            raise MessageError("parent_header and metadata must be objects")
        if not isinstance(content, dict):
            raise MessageError("content must be an object")
        # Replies are routed by these: a list where a str belongs would blow up
        # in the receive loop (unhashable dict key), far from the bad message.
        for name in _ROUTED:
            if not isinstance(header.get(name, ""), str):
                raise MessageError(f"bad header: {name!r} is not a string")
            value = parent.get(name)
            if value is not None and not isinstance(value, str):
                raise MessageError(f"bad parent_header: {name!r} is not a string")
        header["date"] = parse_date(header.get("date"))
        if "date" in parent:
            parent["date"] = parse_date(parent["date"])
        msg: Message = {
            "header": header,
            "msg_id": header.get("msg_id", ""),
            "msg_type": header["msg_type"],
            "parent_header": parent,
            "metadata": metadata,
            "content": content,
            "buffers": buffers,
        }
        return idents, msg

    def feed(self, frames: Sequence[bytes]) -> Message | None:
        """Parse ``frames``; a bad message is logged, counted and ``None`` returned."""
        try:
            return self.deserialize(frames)[1]
        except MessageError as e:
            reason = str(e).split(":")[0]
            self.dropped[reason] += 1
            log.warning("Dropped a bad message: %s", e)
            return None
        except Exception as e:  # the receive loop must survive anything
            self.dropped["unexpected"] += 1
            log.warning("Dropped a message that failed to parse: %r", e)
            return None

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def _remember(self, signature: bytes) -> None:
        self._seen.append(signature)
        self._seen_set.add(signature)
        if len(self._seen) > self._seen_max:
            self._seen_set.discard(self._seen.popleft())


def _default_username() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "kernelkeeper")

"""jupyter_client's ``Session`` calling convention over a kernelkeeper :class:`Session`.

What code written for jupyter_client does with ``km.session`` (jupyter_server's
websocket bridge, tests that read a ``ZMQStream``): split identities off,
parse with or without the content, build, sign and send. Signing, checking
and JSON are kernelkeeper's :class:`~kernelkeeper.session.Session`; nothing
here touches a socket except :meth:`JupyterSession.send`, on the caller's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import MessageError
from .session import DELIM, Message, Session

__all__ = ["JupyterSession"]


class JupyterSession:
    """jupyter_client's Session methods (``feed_identities``, ``deserialize``,
    ``serialize``, ``msg``, ``send``) for the key and scheme of ``session``."""

    def __init__(self, session: Session) -> None:
        self._s = session

    def __repr__(self) -> str:
        return f"<JupyterSession over {self._s!r}>"

    @property
    def session(self) -> str:
        """This end's session id (jupyter_client's ``Session.session``)."""
        return self._s.session

    @property
    def key(self) -> bytes:
        return self._s.key

    @property
    def signature_scheme(self) -> str:
        return self._s.signature_scheme

    @property
    def username(self) -> str:
        return self._s.username

    def msg(
        self,
        msg_type: str,
        content: Mapping[str, Any] | None = None,
        parent: Mapping[str, Any] | None = None,
        header: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Message:
        """A new message dict."""
        return self._s.msg(msg_type, content, parent, header, metadata)

    def feed_identities(
        self, msg_list: Sequence[Any], copy: bool = True
    ) -> tuple[list[bytes], list[bytes]]:
        """Split ``msg_list`` at the delimiter: ``(identities, the rest)``."""
        frames = [f.bytes if hasattr(f, "bytes") else bytes(f) for f in msg_list]
        try:
            i = frames.index(DELIM)
        except ValueError:
            raise MessageError("no delimiter frame in the message") from None
        return frames[:i], frames[i + 1 :]

    def deserialize(
        self, msg_list: Sequence[Any], content: bool = True, copy: bool = True
    ) -> Message:
        """Verify and parse the frames after the delimiter (``feed_identities``' rest).

        With ``content=False`` the content stays the raw JSON bytes, as in
        jupyter_client (it is still verified: the signature covers it).
        """
        frames = [f.bytes if hasattr(f, "bytes") else bytes(f) for f in msg_list]
        _, msg = self._s.deserialize([DELIM, *frames])
        if not content:
            msg["content"] = frames[4]
        return msg

    def serialize(
        self, msg: Mapping[str, Any], ident: Sequence[bytes] | bytes | None = None
    ) -> list[bytes]:
        """Frames ready for ``send_multipart``."""
        return self._s.serialize(msg, ident or ())

    def send(
        self,
        stream: Any,
        msg_or_type: Mapping[str, Any] | str,
        content: Mapping[str, Any] | None = None,
        parent: Mapping[str, Any] | None = None,
        ident: Sequence[bytes] | bytes | None = None,
        buffers: Sequence[bytes] | None = None,
        metadata: Mapping[str, Any] | None = None,
        header: Mapping[str, Any] | None = None,
    ) -> Message:
        """Build (from a type) or take a message, sign it and send it on ``stream``
        (a zmq socket or ``ZMQStream``); returns the message."""
        if isinstance(msg_or_type, str):
            msg = self.msg(msg_or_type, content, parent, header, metadata)
        else:
            msg = dict(msg_or_type)
        if buffers:
            msg["buffers"] = list(buffers)
        stream.send_multipart(self.serialize(msg, ident))
        return msg

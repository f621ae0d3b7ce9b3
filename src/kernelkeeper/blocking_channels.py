"""Blocking views of the client's channels (jupyter_client's blocking channel API).

Each call is handed to the library's loop thread, which owns the sockets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .channels import Channel, HBChannel
from .loopthread import LoopThread
from .session import Message, Session

__all__ = ["BlockingChannel", "BlockingHBChannel"]


class BlockingChannel:
    """A channel whose ``get_msg`` blocks (jupyter_client's blocking channel API)."""

    def __init__(self, channel: Channel, portal: LoopThread) -> None:
        self._channel = channel
        self._portal = portal

    def __repr__(self) -> str:
        return repr(self._channel).replace("<Channel", "<BlockingChannel")

    @property
    def session(self) -> Session:
        return self._channel.session

    def get_msg(self, timeout: float | None = None, *, block: bool = True) -> Message:
        """The next message; :class:`queue.Empty` if none arrives within ``timeout``.

        ``timeout=0`` (or ``block=False``) returns a queued message without waiting.
        """
        if not block:
            timeout = 0
        return self._portal.run(self._channel.get_msg(timeout))

    def get_msgs(self) -> list[Message]:
        return self._portal.run(self._channel.get_msgs())

    def msg_ready(self) -> bool:
        return not self._channel.queue.empty()

    def send(self, msg: Mapping[str, Any]) -> None:
        self._portal.call(self._channel.send, msg)

    def is_alive(self) -> bool:
        return self._channel.is_alive()

    def start(self) -> None:
        self._portal.call(self._channel.start)

    def stop(self) -> None:
        self._portal.run(self._channel.aclose())


class BlockingHBChannel:
    def __init__(self, hb: HBChannel, portal: LoopThread) -> None:
        self._hb = hb
        self._portal = portal

    @property
    def time_to_dead(self) -> float:
        return self._hb.time_to_dead

    def is_beating(self) -> bool:
        return self._hb.is_beating()

    def is_alive(self) -> bool:
        return self._hb.is_alive()

    def pause(self) -> None:
        self._portal.call(self._hb.pause)

    def unpause(self) -> None:
        self._portal.call(self._hb.unpause)

    def start(self) -> None:
        self._portal.call(self._hb.start)

    def stop(self) -> None:
        self._portal.run(self._hb.aclose())

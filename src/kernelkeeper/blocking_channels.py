"""Blocking views of the client's channels (jupyter_client's blocking channel API).

Derived from :class:`~kernelkeeper.channels.Channel` and
:class:`~kernelkeeper.channels.HBChannel` (see :mod:`kernelkeeper.face`):
each call is handed to the portal's loop, which owns the sockets.
"""

from __future__ import annotations

from .channels import Channel, HBChannel
from .face import Face, derive, register
from .loopthread import LoopThread

__all__ = ["BlockingChannel", "BlockingHBChannel"]


@derive(Channel)
class BlockingChannel(Face):
    """A channel whose ``get_msg`` blocks (jupyter_client's blocking channel API).

    ``get_msg(timeout)`` raises :class:`queue.Empty` if nothing arrives in
    time; ``timeout=0`` (or ``block=False``) returns a queued message
    without waiting.
    """

    def __init__(self, channel: Channel, portal: LoopThread) -> None:
        self._bind(channel, portal)

    def __repr__(self) -> str:
        return repr(self._async).replace("<Channel", "<BlockingChannel")

    def msg_ready(self) -> bool:
        """Is a message queued? (Read without a trip to the loop.)"""
        return not self._async.queue.empty()

    def is_alive(self) -> bool:
        """Is the channel running?"""
        return bool(self._async.is_alive())

    def stop(self) -> None:
        """Stop the channel and wait for its task to end."""
        self._portal.run(self._async.aclose())


@derive(HBChannel)
class BlockingHBChannel(Face):
    """The heartbeat channel, its calls handed to the portal's loop."""

    def __init__(self, hb: HBChannel, portal: LoopThread) -> None:
        self._bind(hb, portal)

    def is_beating(self) -> bool:
        """Did the kernel answer the last ping (and is the channel running)?"""
        return bool(self._async.is_beating())

    def is_alive(self) -> bool:
        """Is the channel running?"""
        return bool(self._async.is_alive())

    def stop(self) -> None:
        """Stop pinging and wait for the task to end."""
        self._portal.run(self._async.aclose())


register(Channel, BlockingChannel)
register(HBChannel, BlockingHBChannel)

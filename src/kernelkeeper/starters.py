"""One-call starts: a new kernel with a ready client, and a kernel for a ``with`` block.

The async counterparts of :func:`kernelkeeper.start_new_kernel` and
:func:`kernelkeeper.run_kernel`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from .client import AsyncKernelClient
from .manager import AsyncKernelManager
from .starting import LAUNCH_KEYS

__all__ = ["async_run_kernel", "async_start_new_kernel"]


async def async_start_new_kernel(
    startup_timeout: float = 60, kernel_name: str = "python", **kwargs: Any
) -> tuple[AsyncKernelManager, AsyncKernelClient]:
    """Start a new kernel and return its manager and a ready client.

    Keyword arguments go to :meth:`AsyncKernelManager.start_kernel` (and the
    manager's own options, e.g. ``transport``, to its constructor).
    """
    ctor = {k: kwargs.pop(k) for k in list(kwargs) if k not in LAUNCH_KEYS}
    km = AsyncKernelManager(kernel_name, **ctor)
    await km.start_kernel(startup_timeout=startup_timeout, **kwargs)
    kc = km.client()
    try:
        kc.start_channels()
        await kc.wait_for_ready(timeout=startup_timeout)
    except BaseException:
        await kc.aclose()
        await km.shutdown_kernel(now=True)
        raise
    return km, kc


@contextlib.asynccontextmanager
async def async_run_kernel(**kwargs: Any) -> AsyncIterator[AsyncKernelClient]:
    """An async context manager running a kernel; yields a ready client, shuts down on exit."""
    km, kc = await async_start_new_kernel(**kwargs)
    try:
        yield kc
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=True)

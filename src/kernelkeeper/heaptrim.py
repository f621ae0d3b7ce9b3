"""Handing freed heap memory back to the system once a burst of work is over.

glibc keeps freed pages mapped (in the zmq I/O thread's arena too), so after
a busy hour an idle long-running process would stay at its peak size.
:class:`HeapTrimmer` calls ``malloc_trim(0)`` (well under a millisecond) once,
a moment after the last of a series of events; on other C libraries it does
nothing.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

__all__ = ["HeapTrimmer"]


# Looked up on first use, not at import: ctypes costs ~0.3 MiB resident, and a
# process whose kernels never end never trims.
@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another C library)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


class HeapTrimmer:
    """Trims the heap ``delay`` seconds after the last call of :meth:`soon`."""

    def __init__(self, delay: float = 2.0) -> None:
        self.delay = delay
        self._handle: asyncio.TimerHandle | None = None

    def soon(self) -> None:
        """Trim a moment from now (on the running loop), after any later call."""
        if _malloc_trim() is None:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = asyncio.get_running_loop().call_later(self.delay, self._trim)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _trim(self) -> None:
        self._handle = None
        trim = _malloc_trim()
        if trim is not None:
            trim(0)

"""A kernel's stderr: its tail kept for error reports, and a copy to ours that
never blocks the event loop.

The copy goes through one library thread (:class:`_StderrPump`) and a bounded
buffer; what does not fit is dropped and counted.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import os
import threading
from typing import IO

__all__ = ["StderrTail"]

_TAIL_BYTES = 16 * 1024


class _StderrPump:
    """Copies kernels' stderr to ours on one library thread, through a bounded buffer.

    Our own stderr may be a pipe nobody reads: a write to it can block for
    ever. Written on the event loop, that would freeze every kernel, heartbeat
    and timeout of the loop; here only this thread waits. The loop only
    appends to the buffer (never blocking); what does not fit is dropped and
    counted by the caller.
    """

    limit = 1 << 20  # bytes buffered at most, across all kernels

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[int | None, IO[bytes], bytes]] = collections.deque()
        self._size = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def put(self, fd: int | None, sink: IO[bytes], data: bytes) -> bool:
        """Queue ``data`` for ``sink`` (written to ``fd`` when known); False if dropped."""
        with self._cond:
            if self._closed or self._size + len(data) > self.limit:
                return False
            self._queue.append((fd, sink, data))
            self._size += len(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kk-stderr", daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    idle_exit = 5.0  # seconds without output after which the thread ends

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    if not self._cond.wait(self.idle_exit) and not self._queue:
                        # Quiet kernels: no thread held for them; put() starts one
                        # again (it checks _thread under this same lock).
                        self._thread = None
                        return
                if not self._queue:
                    return
                fd, sink, data = self._queue.popleft()
            try:
                if fd is not None:
                    # The raw fd, not the buffered stream: a write stuck here must not
                    # hold the stream's lock (interpreter shutdown would wait on it).
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                else:
                    sink.write(data)
                    sink.flush()
            except (OSError, ValueError):
                pass  # our stderr is closed or broken: nothing to copy to
            finally:
                with self._cond:
                    self._size -= len(data)

    def close(self, timeout: float) -> None:
        """Write what is buffered (waiting at most ``timeout`` s), then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)


_pump: _StderrPump | None = None
_pump_lock = threading.Lock()


def _stderr_pump() -> _StderrPump:
    global _pump
    with _pump_lock:
        if _pump is None:
            _pump = _StderrPump()
        return _pump


def _forget_pump() -> None:
    global _pump, _pump_lock
    _pump, _pump_lock = None, threading.Lock()  # threads do not survive fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pump)


@atexit.register
def _flush_pump() -> None:
    if _pump is not None:
        _pump.close(timeout=1.0)


def _fileno(stream: IO[bytes] | None) -> int | None:
    try:
        return None if stream is None else stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class StderrTail:
    """The read end of a kernel's stderr pipe, followed from an event loop.

    Keeps the last 16 KiB (for :meth:`text`) and copies everything to ``sink``.
    """

    def __init__(self, fd: int | None, sink: IO[bytes] | None) -> None:
        self._fd = fd
        self._sink = sink
        self._sink_fd = _fileno(sink)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._len = 0
        #: Bytes not copied to ``sink`` because the buffer was full.
        self.dropped = 0

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the pipe from ``loop`` (again, after the loop that did is closed)."""
        self._loop = loop
        if self._fd is not None:
            os.set_blocking(self._fd, False)
            loop.add_reader(self._fd, self._read)

    def drain(self) -> None:
        """Read what the pipe holds now (closing it at its end)."""
        while self._fd is not None:
            try:
                data = os.read(self._fd, 65536)
            except (BlockingIOError, OSError):
                return
            if not data:
                self.close()
                return
            self._keep(data)

    def text(self, lines: int = 20) -> str:
        """The last ``lines`` lines written."""
        self.drain()
        text = b"".join(self._chunks).decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        os.close(fd)

    def _read(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        self._chunks.append(data)
        self._len += len(data)
        while self._len > _TAIL_BYTES and len(self._chunks) > 1:
            self._len -= len(self._chunks.popleft())
        sink = self._sink
        if sink is not None and not _stderr_pump().put(self._sink_fd, sink, data):
            self.dropped += len(data)

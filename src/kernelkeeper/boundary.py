"""The one place foreign errors become kernelkeeper's at the public boundary.

Only the library's own error types (:class:`~kernelkeeper.errors.KernelError`
and its subclasses) leave the public API, plus :class:`queue.Empty` from
``get_msg`` (jupyter_client's contract, which nbclient and papermill rely
on). A raw error from below is mapped to the kernelkeeper class that keeps it
catchable as the same builtin, chained as ``__cause__`` so the traceback
still shows where it came from:

=========================  ================================================
raised inside              seen by the caller
=========================  ================================================
``zmq.ZMQError``           :class:`NotRunningError` (a ``RuntimeError``)
``CancelledError``         :class:`NotRunningError`, when the caller was not
                           the one cancelled (the loop or the client went away)
``KeyError``, ``ValueError``  :class:`MessageError` (a ``ValueError``)
``OSError``                :class:`RuntimeDirError` (an ``OSError``)
=========================  ================================================

``TypeError`` (a call with wrong arguments) and ``KeyboardInterrupt`` pass
unchanged. The jupyter_client compatibility of each class (a
:class:`KernelTimeoutError` is a ``TimeoutError``, ...) is in
:mod:`kernelkeeper.errors`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
from collections.abc import Iterator

import zmq

from .errors import KernelError, MessageError, NotRunningError, RuntimeDirError

__all__ = ["mapped", "translate"]

_PASS = (KernelError, queue.Empty, TypeError, KeyboardInterrupt, SystemExit, GeneratorExit)


def translate(exc: BaseException, *, cancelled_by_caller: bool = False) -> BaseException:
    """The error the public API raises for ``exc`` (``exc`` itself when it is ours)."""
    if isinstance(exc, _PASS):
        return exc
    new: BaseException
    if isinstance(exc, (asyncio.CancelledError, concurrent.futures.CancelledError)):
        if cancelled_by_caller:
            return exc
        new = NotRunningError("The operation was cancelled: its client or loop was closed")
    elif isinstance(exc, zmq.ZMQError):
        new = NotRunningError(f"Socket error: {exc}")
    elif isinstance(exc, KeyError):
        new = MessageError(f"Missing field {exc}")
    elif isinstance(exc, ValueError):
        new = MessageError(str(exc))
    elif isinstance(exc, OSError):
        new = RuntimeDirError(str(exc), getattr(exc, "filename", None))
    else:
        return exc
    new.__cause__ = exc
    return new


def _caller_cancelled() -> bool:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: a thread's call
        return False
    cancelling = getattr(task, "cancelling", None)  # 3.11+
    # Without the count (3.10) a CancelledError in a task is taken as the caller's.
    return task is not None and (cancelling is None or cancelling() > 0)


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    """Re-raise anything raised in the block as :func:`translate` maps it."""
    try:
        yield
    except BaseException as e:
        new = translate(e, cancelled_by_caller=_caller_cancelled())
        if new is e:
            raise
        raise new from e

"""Channel queues: bounded by count and bytes, and ``get_msg`` with short timeouts.

A client that never reads iopub keeps at most ``max_queued`` messages and
``max_queued_bytes`` bytes of them, dropping the oldest and counting what it
dropped; its memory stays flat while a cell prints hundreds of megabytes.
``get_msg(timeout=0)`` returns what is queued, and the blocking readers take
``timeout`` first, as jupyter_client 8 does.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psutil
import pytest

from helpers import wait_for
from kernelkeeper import (
    AsyncKernelClient,
    AsyncKernelManager,
    BlockingKernelClient,
    KernelManager,
    async_start_new_kernel,
    start_new_kernel,
)
from kernelkeeper.channels import MessageQueue

pytestmark = pytest.mark.timeout(120)

READY = 60.0
REPLY = 30.0
MiB = 1 << 20


@pytest.fixture
def bkernel() -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km, kc = start_new_kernel(startup_timeout=READY)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture
async def akernel() -> AsyncIterator[tuple[AsyncKernelManager, AsyncKernelClient]]:
    km, kc = await async_start_new_kernel(startup_timeout=READY)
    try:
        yield km, kc
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=True)


def drain(read: Callable[[float], Any]) -> None:
    """Read until nothing has come for a while (an idle kernel sends nothing)."""
    while True:
        try:
            read(0.5)
        except queue.Empty:
            return


async def until(pred: Callable[[], Any], timeout: float = REPLY) -> Any:
    """Poll ``pred`` (from a worker thread, leaving the loop free) until it holds."""
    return await asyncio.to_thread(wait_for, pred, timeout)


def idle_of(kc: AsyncKernelClient, msg_id: str) -> Callable[[], bool]:
    """Is the newest queued iopub message the idle status of ``msg_id``?"""

    def check() -> bool:
        last = kc.iopub_channel.queue.peek_last()
        return (
            last is not None
            and last["msg_type"] == "status"
            and last["content"]["execution_state"] == "idle"
            and last["parent_header"].get("msg_id") == msg_id
        )

    return check


# -- get_msg ----------------------------------------------------------------------------


def test_blocking_get_msg_timeout_zero_and_positional_timeout(
    bkernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _, kc = bkernel
    msg_id = kc.kernel_info()
    wait_for(kc.shell_channel.msg_ready, REPLY)
    reply = kc.get_shell_msg(timeout=0)
    assert reply["parent_header"]["msg_id"] == msg_id
    with pytest.raises(queue.Empty):
        kc.get_shell_msg(block=False)
    # jupyter_client 8's signature: timeout is the first positional argument.
    drain(kc.get_iopub_msg)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        kc.get_iopub_msg(0.3)
    with pytest.raises(queue.Empty):
        kc.iopub_channel.get_msg(0.3)
    assert time.monotonic() - t0 < 10
    msg_id = kc.execute("print('queued')")
    wait_for(lambda: kc.shell_channel.msg_ready(), REPLY)
    assert kc.get_shell_msg(0)["parent_header"]["msg_id"] == msg_id
    with pytest.raises(TypeError):
        kc.get_iopub_msg(True, 1)  # type: ignore[call-arg, misc]


async def test_async_get_msg_timeout_zero(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    _, kc = akernel
    msg_id = kc.kernel_info()
    await until(lambda: not kc.shell_channel.queue.empty())
    reply = await kc.get_shell_msg(timeout=0)
    assert reply["parent_header"]["msg_id"] == msg_id
    with pytest.raises(queue.Empty):
        await kc.get_shell_msg(timeout=0)


async def test_message_queue_wakeup_survives_cancellation() -> None:
    """A get cancelled after it was woken passes the message on; nothing is lost."""
    q = MessageQueue()
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await until(lambda: len(q._getters) == 2)
    q.put({"msg_type": "m"}, 10)  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    assert (await asyncio.wait_for(second, REPLY))["msg_type"] == "m"
    assert first.cancelled() and q.empty() and q.nbytes == 0


# -- bounded queues -----------------------------------------------------------------------


async def test_queue_bounded_by_count(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    _, kc = akernel
    ch = kc.iopub_channel
    ch.max_queued = 5
    msg_id = kc.execute("for i in range(40): print(i, flush=True)")
    await until(idle_of(kc, msg_id))
    assert ch.queue.qsize() == 5
    assert ch.overflowed >= 40 - 5
    assert ch.overflowed_bytes > 0
    # The newest survive; the oldest went first.
    assert [m["msg_type"] for m in await ch.get_msgs()][-1] == "status"


async def test_queue_bounded_by_bytes(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    _, kc = akernel
    ch = kc.iopub_channel
    ch.max_queued_bytes = 1 * MiB
    msg_id = kc.execute("chunk = 'y' * 100_000\nfor i in range(30): print(chunk, flush=True)")
    await until(idle_of(kc, msg_id))
    assert ch.queue.nbytes <= 1 * MiB
    assert ch.queue.qsize() < 30
    assert ch.overflowed_bytes >= 30 * 100_000 - MiB
    assert ch.overflowed > 0


class PeakRSS:
    """Samples this process's RSS on a thread until stopped; keeps the peak."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> float:
        """Stop; the peak growth in MiB."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return (self.peak - self.base) / MiB


@pytest.mark.skipif(sys.platform != "linux", reason="RSS accounting as on Linux")
async def test_unread_iopub_keeps_memory_flat(
    akernel: tuple[AsyncKernelManager, AsyncKernelClient],
) -> None:
    """~200 MB printed to a client that never reads iopub: RSS grows < 100 MiB."""
    _, kc = akernel
    ch = kc.iopub_channel
    assert ch.max_queued_bytes == 64 * MiB  # the default
    # Warm up (first execution, first large strings) before the baseline.
    await kc.execute("warm = 'w' * 1000", reply=True, timeout=REPLY)
    await ch.get_msgs()
    rss = PeakRSS()
    code = "chunk = 'z' * (1 << 20)\nfor i in range(200): print(chunk, flush=True)"
    t0 = time.monotonic()
    reply = await kc.execute(code, reply=True, timeout=60)
    assert reply["content"]["status"] == "ok"
    await until(idle_of(kc, reply["parent_header"]["msg_id"]), timeout=60)
    grew = rss.stop()
    elapsed = time.monotonic() - t0
    assert ch.queue.nbytes <= 64 * MiB
    assert ch.overflowed_bytes >= 200 * MiB - 64 * MiB
    assert grew < 100, f"RSS grew by {grew:.0f} MiB"
    assert elapsed < 60


# -- the blocking face runs hooks in the caller's thread --------------------------------


def test_blocking_hooks_run_in_the_callers_thread_in_order(
    bkernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _, kc = bkernel
    me = threading.get_ident()
    threads: set[int] = set()
    texts: list[str] = []

    def on_output(msg: dict[str, Any]) -> None:
        threads.add(threading.get_ident())
        if msg["msg_type"] == "stream":
            texts.append(msg["content"]["text"])

    res = kc.run_cell(
        "for i in range(30): print(i, flush=True)", on_output=on_output, timeout=REPLY
    )
    assert res.status == "ok"
    assert "".join(texts) == "".join(f"{i}\n" for i in range(30))
    assert threads == {me}

    def stdin_hook(msg: dict[str, Any]) -> None:
        threads.add(threading.get_ident())
        kc.input("carol")

    seen: list[dict[str, Any]] = []
    reply = kc.execute_interactive(
        "print('hi', input('who? '))",
        allow_stdin=True,
        stdin_hook=stdin_hook,
        output_hook=seen.append,
        timeout=REPLY,
    )
    assert reply["content"]["status"] == "ok"
    assert [m["content"]["text"] for m in seen if m["msg_type"] == "stream"] == ["hi carol\n"]
    assert threads == {me}


def test_slow_blocking_hook_does_not_stall_the_loop(
    bkernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _, kc = bkernel
    entered, release = threading.Event(), threading.Event()
    results: list[Any] = []

    def slow(msg: dict[str, Any]) -> None:
        entered.set()
        release.wait(REPLY)

    def run() -> None:
        results.append(kc.run_cell("print('slow hook')", on_output=slow, timeout=REPLY))

    t = threading.Thread(target=run)
    t.start()
    try:
        assert entered.wait(REPLY)
        # The hook blocks its own thread only: the loop still serves requests.
        reply = kc.kernel_info(reply=True, timeout=10)
        assert reply["content"]["status"] == "ok"
        assert not results  # the cell's call is still in its hook
    finally:
        release.set()
        t.join(REPLY)
    assert not t.is_alive()
    assert results[0].stdout == "slow hook\n"

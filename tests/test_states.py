"""The kernel's state machine: the transition table, and the sequences real kernels go through.

Every test here runs with ``states.strict`` on (a transition not in the table
raises inside the manager) and checks each ``state`` event a listener saw
against the table, for the async manager and the blocking one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import kernelkeeper
from helpers import Recorder
from kernelkeeper import AsyncKernelManager, KernelState, states
from kernelkeeper.states import TRANSITIONS, Transition

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")

READY = 60.0
S = KernelState


@pytest.fixture(autouse=True)
def strict_states(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    monkeypatch.setattr(states, "strict", True)
    with caplog.at_level(logging.ERROR, logger="kernelkeeper.manager"):
        yield
    bad = [r.getMessage() for r in caplog.records if "transition table" in r.getMessage()]
    assert bad == []


# -- the table itself ------------------------------------------------------------------


def test_table_rows_are_well_formed() -> None:
    assert len(set(TRANSITIONS)) == len(TRANSITIONS), "duplicate rows"
    for t in TRANSITIONS:
        assert isinstance(t, Transition)
        assert isinstance(t.source, KernelState) and isinstance(t.target, KernelState)
        assert t.source is not t.target, f"{t}: staying put is not a transition"
        assert t.event and t.event == t.event.strip()
        assert states.allowed(t.source, t.event, t.target)
        assert t.event in states.causes(t.source, t.target)


def test_table_covers_every_state() -> None:
    sources = {t.source for t in TRANSITIONS}
    targets = {t.target for t in TRANSITIONS}
    assert set(KernelState) - targets == {S.NOT_STARTED}  # nothing goes back to not_started
    assert set(KernelState) <= sources  # every state can be left (dead: start again)


def test_every_state_is_reachable_and_can_end() -> None:
    reach = {S.NOT_STARTED}
    while True:
        more = {t.target for t in TRANSITIONS if t.source in reach} - reach
        if not more:
            break
        reach |= more
    assert reach == set(KernelState)
    # From every state a shutdown reaches dead.
    for state in KernelState:
        if state is S.NOT_STARTED:
            continue
        seen, frontier = {state}, {state}
        while frontier:
            frontier = {t.target for t in TRANSITIONS if t.source in frontier} - seen
            seen |= frontier
        assert S.DEAD in seen, state


@pytest.mark.parametrize("row", TRANSITIONS, ids=lambda t: f"{t.source}-{t.event}-{t.target}")
def test_each_row_is_allowed_and_nothing_else(row: Transition) -> None:
    assert states.allowed(row.source, row.event, row.target)
    # The same edge under an event the table does not list is refused.
    assert not states.allowed(row.source, row.event + "-nope", row.target)
    # And the same event into any other target is refused unless listed.
    for other in KernelState:
        listed = Transition(row.source, row.event, other) in TRANSITIONS
        assert states.allowed(row.source, row.event, other) == listed


def test_events_documented() -> None:
    doc = states.__doc__ or ""
    source = open(states.__file__, encoding="utf-8").read()
    for event in {t.event for t in TRANSITIONS}:
        assert f"``{event}``" in source or f"``{event}``" in doc, event


def test_manager_refuses_a_transition_not_in_the_table() -> None:
    km = AsyncKernelManager()
    with pytest.raises(kernelkeeper.LifecycleError, match="transition table"):
        km._set_state(S.IDLE, "ready")  # not_started -> idle is impossible
    assert km.state is S.NOT_STARTED


# -- sequences with real kernels -------------------------------------------------------


class Checked(Recorder):
    """A Recorder that also checks every state event against the table."""

    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []

    def __call__(self, event: kernelkeeper.KernelEvent) -> None:
        if event.kind == "state":
            prev = KernelState(event.detail["previous"])
            cause = event.detail["cause"]
            if not states.allowed(prev, cause, event.state):
                self.bad.append(f"{prev} -{cause}-> {event.state}")
        super().__call__(event)

    def path(self) -> list[str]:
        return [f"{e.detail['cause']}:{e.state}" for e in self.events if e.kind == "state"]


@pytest.fixture(params=["async", "sync"])
async def km(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A manager of either face, with awaitable methods (the blocking one in a thread)."""
    if request.param == "async":
        m: Any = AsyncKernelManager()
    else:
        m = kernelkeeper.KernelManager()
    yield m
    await call(m, "shutdown_kernel", now=True)


async def call(km: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    fn: Callable[..., Any] = getattr(km, name)
    if isinstance(km, AsyncKernelManager):
        return await fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_request_finish_cleanup_ends_dead_with_shutdown_event(km: Any) -> None:
    rec = Checked()
    km.add_event_listener(rec)
    await call(km, "start_kernel")
    await call(km, "wait_ready", READY)
    await call(km, "request_shutdown")
    assert km.state is S.SHUTTING_DOWN
    await call(km, "finish_shutdown", waittime=READY)
    await call(km, "cleanup_resources")
    assert km.state is S.DEAD
    assert not km.has_kernel
    kinds = rec.kinds()
    assert kinds.count("shutdown") == 1 and kinds[-1] == "shutdown"
    assert rec.events[-1].state is S.DEAD
    assert rec.path() == ["start:starting", "ready:idle", "shutdown:shutting_down", "stopped:dead"]
    assert rec.bad == []


async def test_wait_ready_ends_idle(km: Any) -> None:
    rec = Checked()
    km.add_event_listener(rec)
    await call(km, "start_kernel")
    await call(km, "wait_ready", READY)
    assert km.state is S.IDLE
    assert "idle" in repr(km)
    # A second wait_ready on a ready kernel changes nothing.
    await call(km, "wait_ready", READY)
    assert km.state is S.IDLE
    await call(km, "shutdown_kernel")
    assert km.state is S.DEAD
    assert rec.path() == [
        "start:starting",
        "ready:idle",
        "shutdown:shutting_down",
        "stopped:dead",
    ]
    assert rec.bad == []


async def test_shutdown_for_restart_then_start(km: Any) -> None:
    rec = Checked()
    km.add_event_listener(rec)
    await call(km, "start_kernel")
    await call(km, "wait_ready", READY)
    info = km.get_connection_info()
    old_pid = km.process.pid
    await call(km, "shutdown_kernel", restart=True)
    assert km.state is S.RESTARTING
    assert not km.has_kernel
    assert "shutdown" not in rec.kinds()
    await call(km, "start_kernel")
    assert km.state is S.STARTING
    await call(km, "wait_ready", READY)
    assert km.state is S.IDLE
    assert km.process.pid != old_pid
    assert km.get_connection_info() == info  # the kept connection file is used again
    assert rec.path() == [
        "start:starting",
        "ready:idle",
        "restart:restarting",
        "start:starting",
        "ready:idle",
    ]
    assert rec.bad == []


async def test_restart_and_autorestart_paths(km: Any) -> None:
    rec = Checked()
    km.add_event_listener(rec)
    km.autorestart = True
    await call(km, "start_kernel")
    await call(km, "wait_ready", READY)
    await call(km, "restart_kernel")
    await call(km, "wait_ready", READY)
    await call(km, "signal_kernel", 9)
    await rec.wait(lambda evs: [e.kind for e in evs].count("restarted") == 2, READY)
    await call(km, "wait_ready", READY)
    await call(km, "shutdown_kernel", now=True)
    assert rec.path() == [
        "start:starting",
        "ready:idle",
        "restart:restarting",
        "launched:starting",
        "ready:idle",
        "died:dead",
        "restart:restarting",
        "launched:starting",
        "ready:idle",
        "shutdown:shutting_down",
        "stopped:dead",
    ]
    assert rec.bad == []


async def test_busy_idle_through_a_client() -> None:
    km = AsyncKernelManager()
    rec = Checked()
    km.add_event_listener(rec)
    await km.start_kernel()
    kc = km.client()
    try:
        kc.start_channels()
        await kc.wait_for_ready(READY)
        await rec.wait(lambda evs: evs[-1].state is S.IDLE)
        res = await kc.run_cell("1", timeout=30)
        assert res.status == "ok"
        await rec.wait(lambda evs: evs[-1].state is S.IDLE and S.BUSY in [e.state for e in evs])
    finally:
        await kc.aclose()
        await km.shutdown_kernel()
    assert rec.bad == []
    assert km.state is S.DEAD


def _status_tap(kc: Any, want: Callable[[dict[str, Any]], bool]) -> tuple[list[Any], asyncio.Event]:
    """Record every status ``kc`` hands the manager; the event is set when ``want(msg)``."""
    seen: list[Any] = []
    got = asyncio.Event()
    hook = kc.status_hook
    assert hook is not None

    def tap(msg: Any) -> None:
        seen.append(msg)
        hook(msg)
        if want(msg):
            got.set()

    kc.status_hook = tap
    return seen, got


def _status(msg: Any, state: str, parent_type: str) -> bool:
    return bool(
        msg["content"].get("execution_state") == state
        and msg["parent_header"].get("msg_type") == parent_type
    )


async def test_a_clients_ready_reply_ends_starting_even_if_every_status_is_lost() -> None:
    # Right after a restart a probe's idle can be published before the client's
    # new subscription reaches the kernel, and is then lost; the kernel_info
    # reply (on shell) still tells the manager the kernel is up.
    km = AsyncKernelManager()
    rec = Checked()
    km.add_event_listener(rec)
    await km.start_kernel()
    kc = km.client()
    kc.status_hook = None  # as if no status ever reached the manager
    try:
        await km.restart_kernel()
        assert km.state is S.STARTING
        reply = await kc.wait_for_ready(READY)
        assert km.state is S.IDLE
        await rec.wait(lambda evs: evs[-1].kind == "state" and evs[-1].state is S.IDLE, READY)
        # A reply signed by a process since replaced is stale and moves nothing.
        await km.restart_kernel()
        assert km.state is S.STARTING
        kc.ready_hook(reply)  # type: ignore[misc]
        assert km.state is S.STARTING
        await kc.wait_for_ready(READY)
        assert km.state is S.IDLE
    finally:
        await kc.aclose()
        await km.shutdown_kernel(now=True)
    assert rec.bad == []


@pytest.mark.parametrize("ready", ["wait_ready", "wait_for_ready"])
async def test_restart_with_a_client_ends_idle_whatever_probes_and_old_statuses_say(
    ready: str,
) -> None:
    km = AsyncKernelManager()
    rec = Checked()
    km.add_event_listener(rec)
    await km.start_kernel()
    kc = km.client()
    seen, _ = _status_tap(kc, lambda m: False)
    kc2 = None
    try:
        kc.start_channels()
        await kc.wait_for_ready(READY)
        assert (await kc.run_cell("1", timeout=30)).status == "ok"  # ends on its idle
        old_busy = next(m for m in seen if _status(m, "busy", "execute_request"))

        await km.restart_kernel()
        if ready == "wait_ready":
            await km.wait_ready(READY)
        else:
            await kc.wait_for_ready(READY)  # the probe's idle makes it idle
            await rec.wait(lambda evs: evs[-1].kind == "state" and evs[-1].state is S.IDLE)
        assert km.state is S.IDLE
        # A status of the old process still queued in a client's socket, as
        # the client hands it over when it arrives after the restart.
        kc.status_hook(old_busy)  # type: ignore[misc]
        assert km.state is S.IDLE

        before = len(rec.events)
        kc2 = km.client()
        _, probe_idle = _status_tap(kc2, lambda m: _status(m, "idle", "kernel_info_request"))
        kc2.start_channels()
        await kc2.wait_for_ready(READY)
        assert km.state is S.IDLE
        # Also once a probe's own idle (after its busy) has arrived. The
        # handshake's may have been published before kc2's subscription was in
        # place; one sent now that it is proven cannot be lost.
        await kc2.kernel_info(reply=True, timeout=READY)
        await asyncio.wait_for(probe_idle.wait(), READY)
        assert km.state is S.IDLE
        assert [e for e in rec.events[before:] if e.kind == "state"] == []

        # The new process's own statuses still move it.
        assert (await kc.run_cell("2", timeout=30)).status == "ok"
        await rec.wait(lambda evs: S.BUSY in [e.state for e in evs[before:]], READY)
        await rec.wait(lambda evs: evs[-1].kind == "state" and evs[-1].state is S.IDLE, READY)
    finally:
        if kc2 is not None:
            await kc2.aclose()
        await kc.aclose()
        await km.shutdown_kernel(now=True)
    assert rec.bad == []

"""Readiness of a gateway bridge: is its iopub subscription known to reach the
kernel's current process? (A part of :class:`~kernelkeeper.gateway_bridge.KernelBridge`.)

A bridge is *live* once an ``iopub_welcome`` or the status of one of its
``kernel_info_request`` probes reached its iopub subscription, and the probe
was answered. Probes go to control (which a busy ipykernel still answers) and
to shell (which every kernel answers), as jupyter_server's nudge does; an
answer to an older probe (from the process a restart is replacing) does not
count. Until live, the clients' messages are held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import zmq
import zmq.asyncio

from .errors import KernelTimeoutError
from .gateway_session import BridgeLimits, SignedReceiver
from .session import Session

__all__ = ["ProbedReadiness"]

log = logging.getLogger("kernelkeeper.gateway")


class ProbedReadiness(SignedReceiver):
    """The probe state and methods of a bridge (see the module's docstring)."""

    kernel_id: str
    limits: BridgeLimits
    _session: Session
    _closed: bool
    _tasks: list[asyncio.Task[None]]

    def _init_readiness(self) -> None:
        # The probe's own session id: a parent header naming it is a probe's.
        self._probe_mark = self._session.session.encode("ascii")
        self._live = asyncio.Event()
        self._probe_replied = False
        self._probe_seen = False
        self._probe_ids: set[str] = set()
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_deadline = 0.0
        # Made on the first probe (most kernels are never restarted).
        self._probes: list[zmq.asyncio.Socket] = []

    def _socket(self, kind: int, channel: str, rcvhwm: int | None = None) -> zmq.asyncio.Socket:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _probe_sockets(self) -> list[zmq.asyncio.Socket]:
        # Probes go to control (which a busy ipykernel still answers) and to shell
        # (which every kernel answers), as jupyter_server's nudge does.
        if not self._probes and not self._closed:
            loop = asyncio.get_running_loop()
            self._probes = [self._socket(zmq.DEALER, ch) for ch in ("control", "shell")]
            for sock, ch in zip(self._probes, ("control", "shell"), strict=True):
                self._tasks.append(
                    loop.create_task(self.receive(sock, ch, self._on_probe_reply), name="kk-gw-rx")
                )
        return self._probes

    @property
    def live(self) -> bool:
        """Is our iopub subscription confirmed for the kernel's current process?"""
        return self._live.is_set()

    def _on_probe_reply(self, channel: str, parts: list[bytes]) -> None:
        if self._current_probe(parts[1]):
            self._probe_replied = True
            self._check_live()

    def _current_probe(self, parent: bytes) -> bool:
        """Is ``parent`` the header of a probe sent since the last reset? (A late answer
        to an older probe may come from the process a restart is replacing.)"""
        try:
            msg_id = json.loads(parent).get("msg_id")
        except (ValueError, AttributeError):
            return False
        return msg_id in self._probe_ids

    def _check_live(self) -> None:
        if self._probe_seen and self._probe_replied and not self._live.is_set():
            self._live.set()
            self._flush()

    def reset(self, probe: bool = False) -> None:
        """A restart or a death: hold the clients' messages until the new process is
        confirmed to reach us. ``probe``: start probing now (the old process is gone
        already; a restart we make ourselves probes once it is over, or the old
        process would answer)."""
        self._live.clear()
        self._probe_seen = self._probe_replied = False
        self._probe_ids.clear()
        if probe:
            self.revalidate()

    def revalidate(self) -> None:
        """The kernel is (re)started: probe until it reaches our sockets, then resume."""
        self._ensure_probe()

    def _ensure_probe(self) -> asyncio.Task[None]:
        self._probe_deadline = time.monotonic() + self.limits.ready_timeout
        task = self._probe_task
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._run_probe(), name="kk-gw-probe")
            # A timeout after a restart has no waiter; it is logged in _run_probe.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._probe_task = task
        return task

    async def _run_probe(self) -> None:
        while not self._live.is_set():
            if self._closed:
                return
            remaining = self._probe_deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "kernel %s: no answer to readiness probes in %.0f s",
                    self.kernel_id,
                    self.limits.ready_timeout,
                )
                self._flush()  # do not hold clients' messages forever
                raise KernelTimeoutError(
                    f"Kernel {self.kernel_id} did not answer within {self.limits.ready_timeout:g} s"
                )
            for sock in self._probe_sockets():
                msg = self._session.msg("kernel_info_request")
                self._probe_ids.add(msg["msg_id"])
                await sock.send_multipart(self._session.serialize(msg))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._live.wait(), min(remaining, self.limits.probe_interval)
                )

    async def wait_live(self) -> None:
        """Return once the bridge is live; :class:`KernelTimeoutError` after the deadline."""
        if self._live.is_set():
            return
        task = self._probe_task
        if task is None or task.done():
            task = self._ensure_probe()
        await asyncio.shield(task)

"""Kernels as Slurm jobs: the ``slurm/<spec>`` kernel types.

``slurm/python3`` runs the kernelspec ``python3`` as a batch job submitted
with ``sbatch``, with the options of ``kernelkeeper_remote.json``'s
``"slurm"`` section (partition, time, cpus, mem, gres, account, ...; see
:mod:`kernelkeeper.remote_config`) and those given to the start
(``remote_options=``).

The job runs ``_remote_launcher.py`` on its node; the kernel's key reaches it
inside the batch script, sent on sbatch's stdin (only the job's owner and the
cluster's administrators can read a batch script), and the kernel reports its
ports over the registration handshake, so neither a shared filesystem nor
ports picked on the submitting host are needed.

The job is followed through the scheduler: ``squeue`` while it is known
there, then ``scontrol show job`` for its final state; signals go through
``scancel --signal=<SIG> --full``, the end through ``scancel``. A start that
exceeds its timeout, and a job that ends before the kernel registers, cancel
the job and raise an error with the scheduler's reason (``PartitionDown``,
``Resources``, ``QOSMaxJobsPerUserLimit``, ...); a submission the scheduler
refuses (an invalid partition, resources no node has) raises
:class:`~kernelkeeper.errors.KernelStartError` with sbatch's own message,
and no job exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal as _signal
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .connection import ConnectionInfo
from .errors import KernelError, KernelStartError
from .finder import KernelProvider, KernelSpecProvider
from .kernelspec import KernelSpec
from .registration import Registrar
from .remote import RemoteKernelManager, launcher_script, remote_python
from .remote_config import SlurmOptions, slurm_options
from .remote_start import RemoteStart

__all__ = ["SlurmError", "SlurmJobManager", "SlurmProvider", "launch_slurm"]

log = logging.getLogger("kernelkeeper.slurm")

#: Job states after which nothing of the job runs any more (COMPLETING: its
#: processes are being ended).
_ENDED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
#: Seconds cleanup waits for an ended job to leave squeue.
_GONE_TIMEOUT = 30.0
_FAST_POLL = 0.25
#: Seconds between repeated cancels of a job that does not leave the queue.
_RECANCEL_EVERY = 5.0


class SlurmError(KernelStartError):
    """A Slurm command failed (sbatch refused the job, squeue cannot be reached)."""


class _Unreachable(SlurmError):
    """squeue/scontrol did not answer (slurmctld down or busy): the job's state is unknown."""


def _unknown_job(err: str) -> bool:
    return "Invalid job id" in err


class _Slurm:
    """Runs the Slurm commands, each with a deadline, never blocking the loop."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def run(self, *argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise SlurmError(f"Cannot run {argv[0]!r}: {e}") from e
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except BaseException as e:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(e, asyncio.TimeoutError):
                raise _Unreachable(f"{argv[0]} took more than {self.timeout} s") from None
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def job_state(self, job_id: str) -> tuple[str, str, str]:
        """``(state, reason, exit code "a:b")``; state "" when Slurm no longer knows the job."""
        rc, out, _err = await self.run("squeue", "-h", "-j", job_id, "-o", "%T|%r")
        line = out.strip().splitlines()[0] if rc == 0 and out.strip() else ""
        if line:
            state, _, reason = line.partition("|")
            if state not in _ENDED:
                return state, reason, ""
        rc, out, err = await self.run("scontrol", "-o", "show", "job", job_id)
        if rc != 0 and not _unknown_job(err):
            raise _Unreachable(f"scontrol show job {job_id}: {err.strip()}")
        if "JobState=" not in out:
            return "", "", ""
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        return fields.get("JobState", ""), fields.get("Reason", ""), fields.get("ExitCode", "")

    async def in_queue(self, job_id: str) -> bool:
        rc, out, err = await self.run("squeue", "-h", "-j", job_id, "-o", "%T")
        if rc != 0 and not _unknown_job(err):
            raise _Unreachable(f"squeue -j {job_id}: {err.strip()}")
        return rc == 0 and bool(out.strip())

    async def cancel(self, job_id: str, signame: str | None = None) -> None:
        argv = ["scancel"]
        if signame is not None:
            argv += [f"--signal={signame}", "--full"]
        rc, _out, err = await self.run(*argv, job_id)
        if rc != 0 and "already completing or completed" not in err:
            log.warning("%s %s failed: %s", " ".join(argv), job_id, err.strip())


def _exit_code(state: str, code: str) -> int:
    """Slurm's ``ExitCode=a:b`` (exit status a, signal b) as a returncode."""
    status, _, sig = code.partition(":")
    try:
        if sig and int(sig):
            return -int(sig)
        if status:
            return int(status)
    except ValueError:
        pass
    return 0 if state == "COMPLETED" else 255


def _describe(job_id: str, state: str, reason: str, code: str = "") -> str:
    if not state:
        return f"job {job_id} is no longer known to Slurm"
    text = f"job {job_id} {state}"
    if reason and reason != "None":
        text += f" (reason: {reason})"
    if code:
        text += f", exit code {code}"
    return text


class SlurmJobManager(RemoteKernelManager):
    """The process-level manager of a kernel running as Slurm job :attr:`job_id`."""

    def __init__(
        self,
        info: ConnectionInfo,
        *,
        job_id: str,
        slurm: _Slurm,
        options: SlurmOptions,
        kernel_id: str,
        pid: int,
        hostname: str,
        files_to_cleanup: Sequence[str] = (),
    ) -> None:
        super().__init__(
            info, kernel_id=kernel_id, pid=pid, hostname=hostname, files_to_cleanup=files_to_cleanup
        )
        #: The Slurm job id.
        self.job_id = job_id
        self._slurm = slurm
        self.poll_interval = options.poll_interval
        self.heartbeat_interval = options.heartbeat_interval
        self.node_lost_after = options.node_lost_after or None

    def __repr__(self) -> str:
        state = "alive" if self._returncode is None else f"exited({self._returncode})"
        return f"<SlurmJobManager job={self.job_id} node={self.hostname} {state}>"

    async def _poll(self) -> tuple[int, str] | None:
        try:
            state, reason, code = await self._slurm.job_state(self.job_id)
        except _Unreachable as e:
            # Not an end: slurmctld restarts and busy spells pass. Ask again later.
            log.warning("Slurm job %s: state unknown for now (%s)", self.job_id, e)
            return None
        if state and state not in _ENDED:
            return None
        return _exit_code(state, code), _describe(self.job_id, state, reason, code)

    async def _lost(self, silent_for: float) -> tuple[int, str]:
        try:
            state, reason, _code = await self._slurm.job_state(self.job_id)
            seen = _describe(self.job_id, state, reason)
        except SlurmError as e:
            seen = f"job {self.job_id}: {e}"
        try:
            await self._slurm.cancel(self.job_id)
        except SlurmError as e:
            log.warning("Could not cancel Slurm job %s: %s", self.job_id, e)
        return 255, (
            f"no heartbeat from node {self.hostname} for {silent_for:.0f} s: the node or its "
            f"network is gone ({seen}); the job was cancelled"
        )

    async def _send_signal(self, signum: int) -> None:
        await self._slurm.cancel(self.job_id, _signal.Signals(signum).name.removeprefix("SIG"))

    async def _terminate(self) -> None:
        await self._slurm.cancel(self.job_id)

    async def _release(self) -> None:
        # The job's end is seen at COMPLETING; it leaves the queue once its
        # processes are gone. Nothing is left behind only after that.
        await _wait_left_queue(self._slurm, self.job_id)


def _batch_script(python: str, settings: Mapping[str, Any]) -> str:
    about = "a kernel as a batch job (settings, key included, on the launcher's stdin)"
    return f"#!/bin/sh\n# kernelkeeper: {about}\n" + launcher_script(python, settings)


def _connect_host(options: SlurmOptions) -> str:
    if options.connect_address:
        return options.connect_address
    if options.registration_address not in ("0.0.0.0", "::", "*"):
        return options.registration_address
    # The plain host name: what a cluster's nodes usually resolve to the login
    # node (getfqdn() may give "localhost" where /etc/hosts maps the name to loopback).
    return socket.gethostname()


class SlurmProvider(KernelProvider):
    """Every local kernelspec as a Slurm job (listed only where ``sbatch`` exists)."""

    id = "slurm"

    def find_kernels(self) -> Iterator[tuple[str, KernelSpec]]:
        if shutil.which("sbatch") is None:
            return
        yield from KernelSpecProvider().find_kernels()

    def get_spec(self, name: str) -> KernelSpec:
        # Installed kernelspecs only, with no python3 fallback to this interpreter's
        # ipykernel: the finder probes every provider for a bare name, and a bare
        # "python3" must never become a Slurm job.
        return KernelSpecProvider().get_spec(name)

    async def launch(self, name: str, **params: Any) -> tuple[ConnectionInfo, SlurmJobManager]:
        """Submit the kernel ``name`` as a job; returns once the kernel has registered."""
        return await launch_slurm(self.get_spec(name), **params)


async def launch_slurm(
    spec: KernelSpec,
    *,
    kernel_id: str | None = None,
    connection_file: str | None = None,
    connection_info: ConnectionInfo | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    extra_arguments: Sequence[str] = (),
    startup_timeout: float = 60.0,
    kernel_name: str = "",
    transport_encryption: str = "disabled",
    remote_options: Mapping[str, Any] | None = None,
    **_ignored: Any,
) -> tuple[ConnectionInfo, SlurmJobManager]:
    """Run ``spec`` as a Slurm job; ``(connection_info, manager)`` once it registered.

    ``remote_options`` override the config file's ``"slurm"`` section.
    ``connection_info`` from a previous run keeps the key (a restart); the
    node binds the previous ports again when they are free there. Launch
    arguments that only make sense locally (``stdout``, ``stderr``,
    ``independent``, ``transport``, ``ip``) are ignored.
    """
    options = slurm_options(remote_options)
    start = RemoteStart.new(
        spec, kernel_id, connection_file, connection_info, kernel_name, transport_encryption
    )
    slurm = _Slurm(options.commands_timeout)
    registrar = Registrar.get(options.registration_address)
    settings = start.settings(
        registrar.url_for(_connect_host(options)), env=env, cwd=cwd, extra_arguments=extra_arguments
    )
    script = _batch_script(remote_python(spec, options.python), settings)
    report_fut = registrar.expect(start.token, start.info.key)
    job_id: str | None = None
    try:
        argv = ["sbatch", "--parsable", *options.sbatch_options(start.name)]
        rc, out, err = await slurm.run(*argv, stdin=script.encode())
        if rc != 0:
            raise SlurmError(f"Slurm refused kernel {start.name!r}: {err.strip() or out.strip()}")
        job_id = out.strip().split(";")[0]
        log.info("Kernel %s submitted as Slurm job %s", start.kernel_id, job_id)
        ended = asyncio.ensure_future(_until_ended(slurm, job_id, options.pending_poll_interval))

        async def why_late() -> str:
            state = await slurm.job_state(job_id or "")
            return _describe(job_id or "", *state)

        async def why_ended() -> str:
            return _describe(job_id or "", *ended.result())

        try:
            report = await start.report(
                report_fut, ended, timeout=startup_timeout, why_late=why_late, why_ended=why_ended
            )
        finally:
            # start.report cancelled the polling; it has stopped once this returns.
            with contextlib.suppress(asyncio.CancelledError, KernelError):
                await ended
        info = start.reported(report)
        start.write(info)
    except BaseException:
        if job_id is not None:
            await asyncio.shield(_cancel_and_wait(slurm, job_id))
        raise
    finally:
        await registrar.release(start.token)
    km = SlurmJobManager(
        info, job_id=job_id, slurm=slurm, options=options, **start.manager_args(report)
    )
    km.start_watching()
    return info, km


async def _until_ended(slurm: _Slurm, job_id: str, interval: float) -> tuple[str, str, str]:
    """Poll until the job has ended (or Slurm forgot it); its last state."""
    while True:
        try:
            state, reason, code = await slurm.job_state(job_id)
        except _Unreachable as e:
            log.warning("Slurm job %s: state unknown for now (%s)", job_id, e)
        else:
            if not state or state in _ENDED:
                return state, reason, code
        await asyncio.sleep(interval)  # polling the scheduler: it pushes nothing


async def _wait_left_queue(slurm: _Slurm, job_id: str) -> None:
    """Wait (at most ``_GONE_TIMEOUT`` s) until the job is no longer in ``squeue``.

    Every few seconds the cancel is sent again: slurmctld retries a kill that
    did not reach the node only about once a minute, so a node back on the
    network would otherwise keep the job (COMPLETING) that long.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _GONE_TIMEOUT
    recancel = loop.time() + _RECANCEL_EVERY
    while loop.time() < deadline:
        try:
            if not await slurm.in_queue(job_id):
                return
            if loop.time() >= recancel:
                recancel = loop.time() + _RECANCEL_EVERY
                await slurm.cancel(job_id)
        except SlurmError as e:
            log.warning("Slurm job %s: state unknown for now (%s)", job_id, e)
        await asyncio.sleep(_FAST_POLL)  # polling the scheduler: it pushes nothing
    log.warning("Slurm job %s is still in the queue %s s after its end", job_id, _GONE_TIMEOUT)


async def _cancel_and_wait(slurm: _Slurm, job_id: str) -> None:
    """``scancel`` the job and wait (bounded) until it has left the queue."""
    try:
        await slurm.cancel(job_id)
    except SlurmError as e:
        log.warning("Could not cancel Slurm job %s: %s", job_id, e)
    await _wait_left_queue(slurm, job_id)

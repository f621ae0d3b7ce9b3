"""Starting one managed kernel: the launch, restarts, and the supervisor's hooks.

:class:`KernelStarting` is the middle part of
:class:`~kernelkeeper.AsyncKernelManager`: it looks the kernelspec up, runs a
launch as a task a shutdown may cancel, restarts (asked for or automatic,
see :mod:`kernelkeeper.supervisor`), and keeps the launch arguments restarts
use again. The attributes it declares are set by ``AsyncKernelManager.__init__``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from .connection import ConnectionInfo
from .errors import (
    KernelExecutableNotFound,
    KernelStartError,
    LifecycleError,
    NotRunningError,
)
from .finder import KernelFinder, KernelProvider, default_finder
from .kernelspec import KernelSpec
from .launch import launch_kernel
from .manager_state import ShutdownStatus
from .states import KernelState
from .stopping import KernelStopping
from .subproc import KernelManager as ProcessManager

__all__ = ["LAUNCH_KEYS", "KernelStarting"]

#: The keyword arguments of ``start_kernel`` (and of ``restart_kernel``, ``set_launch_args``).
LAUNCH_KEYS = frozenset(
    {
        "cwd",
        "env",
        "extra_arguments",
        "stdout",
        "stderr",
        "independent",
        "startup_timeout",
        "fork_server",  # None: KERNELKEEPER_FORKSERVER or the default (see forkserver)
        "remote_options",  # Slurm and SSH kernel types only (see docs/remote.md)
    }
)

S = KernelState


def _check_launch_keys(where: str, kw: Mapping[str, Any]) -> None:
    unknown = set(kw) - LAUNCH_KEYS
    if unknown:
        raise TypeError(f"{where}() got unexpected arguments: {sorted(unknown)}")


class KernelStarting(KernelStopping):
    """Start, restart and the supervisor's hooks of one kernel."""

    kernel_name: str
    transport: str
    ip: str
    transport_encryption: str
    _spec: KernelSpec | None
    _spec_given: bool
    _finder: KernelFinder | None
    _launch_kw: dict[str, Any]
    _restarts_waiting: int
    _key: bytes

    @property
    def kernel_spec(self) -> KernelSpec:
        """The kernel's spec, looked up by ``kernel_name`` on first use."""
        if self._spec is None:
            finder = self._finder or default_finder()
            self._spec = finder.get_spec(self.kernel_name or None)
        return self._spec

    def _launching_provider(self) -> tuple[KernelProvider, str] | None:
        """The provider that launches this kernel type itself (Slurm, SSH), or None:
        a local launch of :attr:`kernel_spec` (a spec given to the constructor, or a
        provider that launches the usual way)."""
        if self._spec_given:
            return None
        provider, name = (self._finder or default_finder()).resolve(self.kernel_name or None)
        if type(provider).launch is KernelProvider.launch:
            return None
        return provider, name

    def format_kernel_cmd(self, extra_arguments: Sequence[str] | None = None) -> list[str]:
        """The kernel's argv with ``{connection_file}`` and the like filled in."""
        cmd = self.kernel_spec.format_argv(self.connection_file)
        return cmd + list(extra_arguments or self._launch_kw.get("extra_arguments") or ())

    def set_launch_args(self, **kw: Any) -> None:
        """Change arguments later restarts launch with (those of :meth:`start_kernel`,
        e.g. ``cwd``); the others stay as they were. A later ``start_kernel``
        sets them all anew."""
        _check_launch_keys("set_launch_args", kw)
        self._launch_kw.update(kw)

    async def start_kernel(self, **kw: Any) -> None:
        """Start a kernel on this host in a separate process.

        Keyword arguments: ``cwd``, ``env`` (replaces the inherited
        environment; the spec's env applies on top), ``extra_arguments``,
        ``stdout``/``stderr`` (passed to the process; stderr is otherwise
        captured, copied to ours and kept for error reports),
        ``independent`` (let the kernel outlive this process),
        ``startup_timeout``. For an ipykernel this returns once the kernel
        has bound its ports; then ``client().wait_for_ready()``.

        Raises :class:`LifecycleError` if a kernel is already running, or if
        :meth:`shutdown_kernel` is called meanwhile (the start is abandoned and
        the kernel killed). After ``shutdown_kernel(restart=True)`` the new
        kernel reuses the connection file, key and ports.
        """
        kernel_id = kw.pop("kernel_id", None)
        _check_launch_keys("start_kernel", kw)
        ready = self._begin_ready()
        try:
            async with self._get_lock():
                if self._proc is not None:
                    if await self._proc.is_alive():
                        raise LifecycleError(
                            f"Kernel {self.kernel_id} is already running; "
                            "shut it down or restart it instead"
                        )
                    await self._stop_process(now=True, restart=False)  # died, not cleaned up
                if kernel_id is not None and kernel_id != self.kernel_id:
                    # jupyter_client's MultiKernelManager passes the id it chose.
                    self.kernel_id = kernel_id
                self.kernel_spec  # noqa: B018 - a bad spec fails here, before any state change
                reuse = self._state is S.RESTARTING and self.connection_info is not None
                self._launch_kw = dict(kw)
                self.supervisor.reset()
                self.shutdown_status = ShutdownStatus.Unset
                self._reopen_context()
                self._set_state(S.STARTING, "start")
                await self._run_launch(self.connection_info if reuse else None, "started")
        except BaseException as e:
            self._settle_ready(ready, e)
            raise
        else:
            self._settle_ready(ready, None)
        finally:
            await self._delivered()

    async def restart_kernel(self, now: bool = False, newports: bool = False, **kw: Any) -> None:
        """Restart the kernel with the arguments that were used to launch it.

        The same connection file, key and ports are used again (unless
        ``newports=True``). ``now=True`` kills the old kernel at once instead of
        asking it to shut down. Keyword arguments override those of the start.
        """
        _check_launch_keys("restart_kernel", kw)
        if not self._owns_kernel:
            raise LifecycleError(
                f"Cannot restart kernel {self.kernel_id}: this manager does not own it"
            )
        self._restarts_waiting += 1  # before the lock: an automatic restart gives way
        ready = self._begin_ready()
        try:
            async with self._get_lock():
                if self._proc is None:
                    raise NotRunningError("Cannot restart: no kernel is running")
                self._set_state(S.RESTARTING, "restart")
                self._emit("restarting", now=now)
                await self._stop_process(now=now, restart=True)
                self._launch_kw.update(kw)
                info = self.connection_info
                if newports and info is not None:
                    # Same key, ports chosen anew (port 0: the kernel or launch picks them).
                    info = info.replace(
                        shell_port=0, iopub_port=0, stdin_port=0, control_port=0, hb_port=0
                    )
                await self._run_launch(info, "restarted")
        except BaseException as e:
            self._settle_ready(ready, e)
            raise
        else:
            self._settle_ready(ready, None)
        finally:
            self._restarts_waiting -= 1
            await self._delivered()

    # -- the launch -----------------------------------------------------------

    async def _run_launch(
        self, info: ConnectionInfo | None, kind: str, detail: Mapping[str, Any] | None = None
    ) -> None:
        """Launch as a task of its own, which a shutdown_kernel() call may cancel."""
        if self._shutdowns_waiting:
            self._launch_aborted()
        task = asyncio.get_running_loop().create_task(
            self._launch(info, kind, detail or {}), name=f"kk-launch-{self.kernel_id[:8]}"
        )
        self._launch_task = task
        try:
            await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            cancelling = getattr(me, "cancelling", None)  # 3.11+: was *our* task cancelled?
            if task.cancelled() and self._shutdowns_waiting and not (cancelling and cancelling()):
                self._launch_aborted()
            raise
        finally:
            if self._launch_task is task:
                self._launch_task = None

    def _launch_aborted(self) -> None:
        raise LifecycleError(
            f"The start of kernel {self.kernel_id} was abandoned: shutdown_kernel() was called"
        )

    async def _launch(
        self, info: ConnectionInfo | None, kind: str, detail: Mapping[str, Any]
    ) -> None:
        spec = self.kernel_spec
        self._stopping = False
        kw = dict(self._launch_kw, transport_encryption=self.transport_encryption)
        if info is None:
            # No ports yet, but the key announced by get_connection_info() (and kept
            # across shutdown and start, as jupyter_client keeps its session's key).
            info = ConnectionInfo(transport=self.transport, ip=self.ip, key=self._key)
        params = dict(
            kernel_id=self.kernel_id,
            connection_file=self.connection_file,
            connection_info=info,
            transport=self.transport,
            ip=self.ip,
            kernel_name=self.kernel_name or spec.name,
            **kw,
        )
        provider = self._launching_provider()
        try:
            if provider is None:
                params.pop("remote_options", None)  # meaningless for a local kernel
                info, proc = await launch_kernel(spec, **params)
            else:
                params.pop("fork_server", None)
                info, proc = await provider[0].launch(provider[1], **params)
        except BaseException as e:
            if self._state in (S.STARTING, S.RESTARTING):  # not when a shutdown took over
                self._set_state(S.DEAD, "launch_failed")
            missing = e.__cause__
            if (
                isinstance(e, KernelStartError)
                and not isinstance(e, KernelExecutableNotFound)
                and isinstance(missing, FileNotFoundError)
            ):
                # Also a FileNotFoundError, as jupyter_client's launch raises.
                raise KernelExecutableNotFound(
                    str(e), spec.resource_dir or None, str(missing.filename or spec.argv[0])
                ) from missing
            raise
        self.connection_info = info
        self._key = info.key
        self._files_foreign = False  # the process and its connection file are ours now
        self._proc = proc
        self._current.process_changed()
        self._set_state(S.STARTING, "launched")
        self._emit(kind, **{**detail, "pid": proc.pid})
        self.supervisor.watch()

    # -- the supervisor's hooks (see supervisor.KernelHooks) ------------------

    def _stop_intended(self) -> bool:
        # Recorded before the lock is taken: an automatic restart gives way to them.
        return self._stopping or self._shutdowns_waiting > 0 or self._restarts_waiting > 0

    def _on_died(self, detail: Mapping[str, Any]) -> None:
        self._set_state(S.DEAD, "died")
        self._emit("died", **detail)

    async def _auto_restart(self, proc: ProcessManager | None, detail: Mapping[str, Any]) -> None:
        async with self._get_lock():
            if self._stop_intended() or self._proc is not proc:
                raise LifecycleError(f"Kernel {self.kernel_id}: automatic restart superseded")
            self._set_state(S.RESTARTING, "restart", reason=detail.get("reason"))
            self._emit("restarting", **detail)
            await self._stop_process(now=True, restart=True)  # a hung kernel is killed
            await self._run_launch(self.connection_info, "restarted", detail)

    async def _give_up(self, proc: ProcessManager | None, detail: Mapping[str, Any]) -> bool:
        async with self._get_lock():
            if self._stop_intended() or self._proc is not proc:
                return False
            if proc is not None:
                await proc.kill()  # a hung kernel nobody will restart is of no use
            cause = "launch_failed" if self._state is S.RESTARTING else "died"
            self._set_state(S.DEAD, cause, reason=detail.get("why"))
            self._emit("dead", **detail)
            return True

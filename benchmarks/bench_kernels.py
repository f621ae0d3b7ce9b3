"""The two libraries behind one face: start and stop kernels, multi-kernel managers.

The blocking adapters (:func:`start_kernel`, :func:`stop_kernel`) record every
kernel in :data:`LIVE`, so a child's ``finally`` can stop what is still running;
the async ones build and drive each library's ``AsyncMultiKernelManager``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from bench_common import KERNEL, LIBS, STARTUP_TIMEOUT, alive, progress, warn


class Live:
    """Every (manager, client) started by this process, so a finally can stop them."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, Any, Any]] = []

    def add(self, lib: str, km: Any, kc: Any) -> None:
        self.pairs.append((lib, km, kc))

    def discard(self, km: Any) -> None:
        self.pairs = [p for p in self.pairs if p[1] is not km]

    def close_all(self) -> None:
        pairs, self.pairs = self.pairs, []
        for lib, km, kc in pairs:
            stop_kernel(lib, km, kc, now=True)


LIVE = Live()


def start_kernel(lib: str) -> tuple[Any, Any]:
    """Start a kernel with the library's blocking start_new_kernel; returns (km, kc)."""
    if lib == "kk":
        import kernelkeeper

        km, kc = kernelkeeper.start_new_kernel(
            startup_timeout=STARTUP_TIMEOUT, kernel_name=KERNEL, stderr=subprocess.DEVNULL
        )
    else:
        from jupyter_client.manager import start_new_kernel

        km, kc = start_new_kernel(
            startup_timeout=STARTUP_TIMEOUT, kernel_name=KERNEL, stderr=subprocess.DEVNULL
        )
    LIVE.add(lib, km, kc)
    return km, kc


def stop_kernel(lib: str, km: Any, kc: Any, now: bool = True) -> None:
    """Stop the client's channels and shut the kernel down (never raises)."""
    LIVE.discard(km)
    try:
        if kc is not None:
            kc.stop_channels()
    except Exception as e:
        warn(f"{lib}: stop_channels failed: {e!r}")
    finally:
        try:
            km.shutdown_kernel(now=now)
        except Exception as e:
            warn(f"{lib}: shutdown_kernel failed: {e!r}")
            with contextlib.suppress(Exception):
                km.shutdown_kernel(now=True)


@contextlib.contextmanager
def one_kernel_each() -> Iterator[dict[str, tuple[Any, Any]]]:
    """One kernel per library for the block, stopped at its end."""
    kernels: dict[str, tuple[Any, Any]] = {}
    try:
        for lib in LIBS:
            alive(f"{lib}: start")
            kernels[lib] = start_kernel(lib)
        yield kernels
    finally:
        for lib, (km, kc) in kernels.items():
            stop_kernel(lib, km, kc, now=True)


def warm_up() -> None:
    """Import both libraries and run one full start/stop each (untimed)."""
    progress("warm-up: one start/stop per library")
    for lib in LIBS:
        alive(f"{lib}: warm-up start/stop")
        km, kc = start_kernel(lib)
        stop_kernel(lib, km, kc, now=False)
    subprocess.run([sys.executable, "-c", "import ipykernel.kernelapp"], check=True)


def drain(kc: Any) -> None:
    """Discard whatever is queued on the client's iopub and shell channels."""
    for get in (kc.get_iopub_msg, kc.get_shell_msg):
        while True:
            try:
                get(timeout=0.05)
            except Exception:
                break


def kk_mkm() -> Any:
    """kernelkeeper's multi-kernel manager as a notebook server runs it (autorestart on)."""
    import kernelkeeper

    return kernelkeeper.AsyncMultiKernelManager(
        kernel_manager_kw={"autorestart": True}, ready_timeout=STARTUP_TIMEOUT
    )


def jc_mkm() -> Any:
    """jupyter_client's AsyncMultiKernelManager as a notebook server runs it: its
    defaults (its kernels autorestart), with connection files in the runtime
    directory, as jupyter_server sets it (the default, "", is the cwd)."""
    from jupyter_client.multikernelmanager import AsyncMultiKernelManager
    from jupyter_core.paths import jupyter_runtime_dir

    return AsyncMultiKernelManager(connection_dir=jupyter_runtime_dir())


async def kk_mkm_start(mkm: Any) -> str:
    """One kernel through kernelkeeper's manager: start_kernel returns once it is ready."""
    return str(await mkm.start_kernel(KERNEL, stderr=subprocess.DEVNULL))


async def jc_mkm_start(mkm: Any) -> str:
    """One kernel through jupyter_client's manager, then a client's wait_for_ready:
    its start_kernel returns once the process is launched, before the kernel is ready."""
    kid = str(await mkm.start_kernel(kernel_name=KERNEL, stderr=subprocess.DEVNULL))
    kc = mkm.get_kernel(kid).client()
    kc.start_channels()
    try:
        # Can block the loop for good (see bench_concurrent._jc_many).
        await kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
    finally:
        kc.stop_channels()
    return kid


def mkm_for(lib: str) -> tuple[Any, Callable[[Any], Awaitable[str]]]:
    """The library's multi-kernel manager, and how to start one kernel through it."""
    if lib == "kk":
        return kk_mkm(), kk_mkm_start
    return jc_mkm(), jc_mkm_start


async def mkm_close(lib: str, mkm: Any) -> None:
    """Shut down every kernel of the manager (a failure is a warning); close kernelkeeper's."""
    try:
        await mkm.shutdown_all(now=True)
    except Exception as e:
        warn(f"{lib}: shutdown_all failed: {e!r}")
    if lib == "kk":
        await mkm.aclose()

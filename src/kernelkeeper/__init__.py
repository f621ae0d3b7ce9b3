"""kernelkeeper: find, launch and keep Jupyter kernels under control.

The async core (:class:`AsyncKernelManager`, :class:`AsyncKernelClient`)
runs on asyncio and pyzmq; the blocking API (:class:`KernelManager`,
:class:`BlockingKernelClient`, :func:`start_new_kernel`, :func:`run_kernel`)
runs the same code on an event-loop thread the library owns.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: importing typing alone costs ~10 ms at start-up

# Names are imported on first use (PEP 562): `import kernelkeeper` costs almost
# nothing, so the command line's `--help` starts at once, and a program pays only
# for the parts it uses (the gateway's aiohttp, the SSH provider's asyncssh never
# load unless asked for).
if TYPE_CHECKING:
    from typing import Any

    from .blocking import BlockingKernelClient, KernelManager, run_kernel, start_new_kernel
    from .blocking_multi import MultiKernelManager
    from .client import AsyncKernelClient, CellResult
    from .connection import ConnectionInfo, find_connection_file, write_connection_file
    from .culling import CullPolicy
    from .errors import (
        ConfigurationError,
        ConnectionFileError,
        ConnectionFileNotFound,
        DuplicateKernelError,
        InteropNotSupported,
        KernelDiedError,
        KernelError,
        KernelExecutableNotFound,
        KernelLimitError,
        KernelNotReadyError,
        KernelSpecError,
        KernelStartError,
        KernelTimeoutError,
        LifecycleError,
        MessageError,
        NoSuchKernel,
        NoSuchKernelId,
        NotRunningError,
        RuntimeDirError,
    )
    from .finder import IPykernelProvider, KernelFinder, KernelProvider, KernelSpecProvider
    from .kernelspec import KernelSpec, find_kernel_specs, get_kernel_spec
    from .launch import launch_kernel
    from .manager import AsyncKernelManager, KernelEvent, KernelState, attach_kernel
    from .managerabc import KernelManagerABC
    from .metrics import Metrics
    from .multikernel import AsyncMultiKernelManager
    from .pool import KernelPool, PoolConfig
    from .session import Session
    from .starters import async_run_kernel, async_start_new_kernel

__version__ = "0.1.0"

#: Each public name and the module it comes from.
_EXPORTS: dict[str, str] = {
    "AsyncKernelClient": "client",
    "AsyncKernelManager": "manager",
    "AsyncMultiKernelManager": "multikernel",
    "BlockingKernelClient": "blocking",
    "CellResult": "client",
    "ConfigurationError": "errors",
    "ConnectionFileError": "errors",
    "ConnectionFileNotFound": "errors",
    "ConnectionInfo": "connection",
    "CullPolicy": "culling",
    "DuplicateKernelError": "errors",
    "InteropNotSupported": "errors",
    "IPykernelProvider": "finder",
    "KernelDiedError": "errors",
    "KernelError": "errors",
    "KernelEvent": "manager",
    "KernelExecutableNotFound": "errors",
    "KernelFinder": "finder",
    "KernelLimitError": "errors",
    "KernelManager": "blocking",
    "KernelManagerABC": "managerabc",
    "KernelNotReadyError": "errors",
    "KernelPool": "pool",
    "KernelProvider": "finder",
    "KernelSpec": "kernelspec",
    "KernelSpecError": "errors",
    "KernelSpecProvider": "finder",
    "KernelStartError": "errors",
    "KernelState": "manager",
    "KernelTimeoutError": "errors",
    "LifecycleError": "errors",
    "MessageError": "errors",
    "Metrics": "metrics",
    "MultiKernelManager": "blocking_multi",
    "NoSuchKernel": "errors",
    "NoSuchKernelId": "errors",
    "NotRunningError": "errors",
    "PoolConfig": "pool",
    "RuntimeDirError": "errors",
    "Session": "session",
    "async_run_kernel": "starters",
    "async_start_new_kernel": "starters",
    "attach_kernel": "manager",
    "find_connection_file": "connection",
    "find_kernel_specs": "kernelspec",
    "get_kernel_spec": "kernelspec",
    "launch_kernel": "launch",
    "run_kernel": "blocking",
    "start_new_kernel": "blocking",
    "write_connection_file": "connection",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kernelkeeper' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain global
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AsyncKernelClient",
    "AsyncKernelManager",
    "AsyncMultiKernelManager",
    "BlockingKernelClient",
    "CellResult",
    "ConfigurationError",
    "ConnectionFileError",
    "ConnectionFileNotFound",
    "ConnectionInfo",
    "CullPolicy",
    "DuplicateKernelError",
    "IPykernelProvider",
    "InteropNotSupported",
    "KernelDiedError",
    "KernelError",
    "KernelEvent",
    "KernelExecutableNotFound",
    "KernelFinder",
    "KernelLimitError",
    "KernelManager",
    "KernelManagerABC",
    "KernelNotReadyError",
    "KernelPool",
    "KernelProvider",
    "KernelSpec",
    "KernelSpecError",
    "KernelSpecProvider",
    "KernelStartError",
    "KernelState",
    "KernelTimeoutError",
    "LifecycleError",
    "MessageError",
    "Metrics",
    "MultiKernelManager",
    "NoSuchKernel",
    "NoSuchKernelId",
    "NotRunningError",
    "PoolConfig",
    "RuntimeDirError",
    "Session",
    "__version__",
    "async_run_kernel",
    "async_start_new_kernel",
    "attach_kernel",
    "find_connection_file",
    "find_kernel_specs",
    "get_kernel_spec",
    "launch_kernel",
    "run_kernel",
    "start_new_kernel",
    "write_connection_file",
]

"""kernelkeeper: find, launch and keep Jupyter kernels under control.

The async core (:class:`AsyncKernelManager`, :class:`AsyncKernelClient`)
runs on asyncio and pyzmq; the blocking API (:class:`KernelManager`,
:class:`BlockingKernelClient`, :func:`start_new_kernel`, :func:`run_kernel`)
runs the same code on an event-loop thread the library owns.
"""

from __future__ import annotations

from .blocking import BlockingKernelClient, KernelManager, run_kernel, start_new_kernel
from .client import AsyncKernelClient, CellResult
from .connection import ConnectionInfo, write_connection_file
from .errors import (
    ConfigurationError,
    ConnectionFileError,
    KernelDiedError,
    KernelError,
    KernelSpecError,
    KernelStartError,
    KernelTimeoutError,
    LifecycleError,
    MessageError,
    NoSuchKernel,
    NotRunningError,
    RuntimeDirError,
)
from .finder import IPykernelProvider, KernelFinder, KernelProvider, KernelSpecProvider
from .kernelspec import KernelSpec, find_kernel_specs, get_kernel_spec
from .launch import launch_kernel
from .manager import (
    AsyncKernelManager,
    KernelEvent,
    KernelState,
    async_run_kernel,
    async_start_new_kernel,
)
from .managerabc import KernelManagerABC
from .session import Session

__version__ = "0.1.0"

__all__ = [
    "AsyncKernelClient",
    "AsyncKernelManager",
    "BlockingKernelClient",
    "CellResult",
    "ConfigurationError",
    "ConnectionFileError",
    "ConnectionInfo",
    "IPykernelProvider",
    "KernelDiedError",
    "KernelError",
    "KernelEvent",
    "KernelFinder",
    "KernelManager",
    "KernelManagerABC",
    "KernelProvider",
    "KernelSpec",
    "KernelSpecError",
    "KernelSpecProvider",
    "KernelStartError",
    "KernelState",
    "KernelTimeoutError",
    "LifecycleError",
    "MessageError",
    "NoSuchKernel",
    "NotRunningError",
    "RuntimeDirError",
    "Session",
    "__version__",
    "async_run_kernel",
    "async_start_new_kernel",
    "find_kernel_specs",
    "get_kernel_spec",
    "launch_kernel",
    "run_kernel",
    "start_new_kernel",
    "write_connection_file",
]

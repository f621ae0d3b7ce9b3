"""kernelkeeper: find, launch and keep Jupyter kernels under control.

The async core (:class:`AsyncKernelManager`, :class:`AsyncKernelClient`)
runs on asyncio and pyzmq; the blocking API (:class:`KernelManager`,
:class:`BlockingKernelClient`, :func:`start_new_kernel`, :func:`run_kernel`)
runs the same code on an event-loop thread the library owns.
"""

from __future__ import annotations

from .blocking import BlockingKernelClient, KernelManager, run_kernel, start_new_kernel
from .blocking_multi import MultiKernelManager
from .client import AsyncKernelClient, CellResult
from .connection import ConnectionInfo, write_connection_file
from .culling import CullPolicy
from .errors import (
    ConfigurationError,
    ConnectionFileError,
    DuplicateKernelError,
    KernelDiedError,
    KernelError,
    KernelExecutableNotFound,
    KernelLimitError,
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
from .manager import AsyncKernelManager, KernelEvent, KernelState
from .managerabc import KernelManagerABC
from .metrics import Metrics
from .multikernel import AsyncMultiKernelManager
from .pool import KernelPool, PoolConfig
from .session import Session
from .starters import async_run_kernel, async_start_new_kernel

__version__ = "0.1.0"

__all__ = [
    "AsyncKernelClient",
    "AsyncKernelManager",
    "AsyncMultiKernelManager",
    "BlockingKernelClient",
    "CellResult",
    "ConfigurationError",
    "ConnectionFileError",
    "ConnectionInfo",
    "CullPolicy",
    "DuplicateKernelError",
    "IPykernelProvider",
    "KernelDiedError",
    "KernelError",
    "KernelEvent",
    "KernelExecutableNotFound",
    "KernelFinder",
    "KernelLimitError",
    "KernelManager",
    "KernelManagerABC",
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
    "find_kernel_specs",
    "get_kernel_spec",
    "launch_kernel",
    "run_kernel",
    "start_new_kernel",
    "write_connection_file",
]

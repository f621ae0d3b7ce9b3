"""jupyter_client's names, bound to kernelkeeper, for jupyter_client's own tests.

Copied next to the extracted upstream test files as ``jc_shim.py``; their
imports of jupyter_client are rewritten to import from here (see
``tests/test_upstream_client.py``). Nothing here changes what a test checks:
each name is kernelkeeper's own object, or a thin stand-in where
jupyter_client spells it differently.
"""

import kernelkeeper
from kernelkeeper import (
    AsyncKernelManager,
    KernelManager,
    NoSuchKernel,
    async_start_new_kernel,
    get_kernel_spec,
    start_new_kernel,
)
from kernelkeeper.manager_state import ShutdownStatus as _ShutdownStatus

__all__ = [
    "NATIVE_KERNEL_NAME",
    "AsyncIOLoopKernelManager",
    "AsyncKernelManager",
    "IOLoopKernelManager",
    "KernelManager",
    "KernelSpecManager",
    "NoSuchKernel",
    "ThreadedKernelClient",
    "ThreadedZMQSocketChannel",
    "_ShutdownStatus",
    "start_new_async_kernel",
    "start_new_kernel",
    "string_types",
    "validate_string_dict",
]

NATIVE_KERNEL_NAME = "python3"
string_types = (str,)  # ipython_genutils.py3compat, for 5.3.5's tests


async def start_new_async_kernel(startup_timeout=60, kernel_name="python", **kwargs):
    """jupyter_client.manager.start_new_async_kernel."""
    return await async_start_new_kernel(startup_timeout, kernel_name, **kwargs)


class KernelSpecManager:
    """The one method the tests call: ``get_kernel_spec(name)``."""

    def get_kernel_spec(self, name):
        return get_kernel_spec(name)


class IOLoopKernelManager(KernelManager):
    """jupyter_client.ioloop's manager: a kernel manager whose restarter is on."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("autorestart", True)
        super().__init__(*args, **kwargs)


class AsyncIOLoopKernelManager(AsyncKernelManager):
    """jupyter_client.ioloop's async manager: restarter on."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("autorestart", True)
        super().__init__(*args, **kwargs)


class _Unsupported:
    """jupyter_client machinery with no kernelkeeper counterpart; the tests
    using it are skipped with their reason."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} is jupyter_client machinery")


class ThreadedKernelClient(_Unsupported):
    pass


class ThreadedZMQSocketChannel(_Unsupported):
    pass


def validate_string_dict(dct):
    raise NotImplementedError("jupyter_client.client.validate_string_dict is a private helper")


assert kernelkeeper  # the package itself is imported by the tests' own imports

"""jupyter_client's own multi-kernel managers, with kernelkeeper's managers as their
``kernel_manager_class`` (the seam jupyter_server's MappingKernelManager uses).

Copied next to the extracted upstream test file as ``jc_mkm_shim.py`` when
``tests/test_upstream_mkm.py`` runs in its ``jupyter_client-mkm`` or ``interop``
mode; the test file's imports of the multi-kernel managers are rewritten to
these. Only the default of ``kernel_manager_class`` differs from upstream's
classes: kernelkeeper's core managers (``KK_MKM_KERNEL_MANAGERS=core``), or the
jupyter_client subclasses of ``kernelkeeper.jupyter_client_interop``
(``KK_MKM_KERNEL_MANAGERS=interop``).
"""

import os

from jupyter_client.multikernelmanager import AsyncMultiKernelManager as _AsyncMKM
from jupyter_client.multikernelmanager import MultiKernelManager as _MKM
from traitlets import DottedObjectName

__all__ = ["AsyncMultiKernelManager", "MultiKernelManager"]

_MANAGERS = {
    "core": ("kernelkeeper.KernelManager", "kernelkeeper.AsyncKernelManager"),
    "interop": (
        "kernelkeeper.jupyter_client_interop.KernelManager",
        "kernelkeeper.jupyter_client_interop.AsyncKernelManager",
    ),
}
_BLOCKING, _ASYNC = _MANAGERS[os.environ.get("KK_MKM_KERNEL_MANAGERS", "core")]


class MultiKernelManager(_MKM):
    kernel_manager_class = DottedObjectName(_BLOCKING, config=True)


class AsyncMultiKernelManager(_AsyncMKM):
    kernel_manager_class = DottedObjectName(_ASYNC, config=True)

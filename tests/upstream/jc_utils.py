"""Stand-in for jupyter_client's ``tests/utils.py`` in the upstream multi-kernel tests.

Copied next to the extracted upstream test file as ``utils.py``. It gives the
helpers those tests import, built on kernelkeeper; the subclass helpers only
exist so the module imports (the tests using them are skipped: they test
jupyter_client's traitlets subclass machinery).
"""

import json
import os
import sys

import pytest

skip_win32 = pytest.mark.skipif(sys.platform.startswith("win"), reason="Windows")


def localhost() -> str:
    return "127.0.0.1"


def install_kernel(kernels_dir, argv=None, name="test", display_name=None):
    """Install a kernelspec in ``kernels_dir`` (as jupyter_client's helper does)."""
    kernel_dir = os.path.join(kernels_dir, name)
    os.makedirs(kernel_dir)
    spec = {
        "argv": argv or [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name or "Test kernel",
    }
    with open(os.path.join(kernel_dir, "kernel.json"), "w") as f:
        json.dump(spec, f)
    return kernel_dir


class _Unsupported:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("traitlets subclass machinery is not part of kernelkeeper")


# One class per name, so that a test parametrized by them shows the name in its id.
AsyncKMSubclass = type("AsyncKMSubclass", (_Unsupported,), {})
SyncKMSubclass = type("SyncKMSubclass", (_Unsupported,), {})
AsyncMKMSubclass = type("AsyncMKMSubclass", (_Unsupported,), {})
SyncMKMSubclass = type("SyncMKMSubclass", (_Unsupported,), {})

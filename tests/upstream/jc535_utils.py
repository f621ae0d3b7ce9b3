"""Stand-in for jupyter_client 5.3.5's ``tests/utils.py`` (``test_env``, ``skip_win32``).

Copied next to the extracted 5.3.5 test files as ``utils.py``. Same behaviour
as upstream's: Jupyter's config, data and runtime directories and IPYTHONDIR
in a fresh temporary directory (upstream used ipython_genutils' copy of
``tempfile.TemporaryDirectory``).
"""

import os
import sys
import tempfile
from unittest.mock import patch

import pytest

pjoin = os.path.join

skip_win32 = pytest.mark.skipif(sys.platform.startswith("win"), reason="Windows")


class test_env:  # upstream's name
    """Set Jupyter path variables to a temporary directory."""

    def start(self):
        self.test_dir = td = tempfile.TemporaryDirectory()
        self.env_patch = patch.dict(
            os.environ,
            {
                "JUPYTER_CONFIG_DIR": pjoin(td.name, "jupyter"),
                "JUPYTER_DATA_DIR": pjoin(td.name, "jupyter_data"),
                "JUPYTER_RUNTIME_DIR": pjoin(td.name, "jupyter_runtime"),
                "IPYTHONDIR": pjoin(td.name, "ipython"),
            },
        )
        self.env_patch.start()

    def stop(self):
        self.env_patch.stop()
        self.test_dir.cleanup()

    def __enter__(self):
        self.start()
        return self.test_dir.name

    def __exit__(self, *exc_info):
        self.stop()

"""conftest for jupyter_client's own multi-kernel tests run against kernelkeeper.

Copied next to the extracted upstream test file as ``conftest.py``. Each test
gets its own Jupyter data and runtime directories (what pytest_jupyter's
``jp_environ`` does upstream). Tests of jupyter_client features kernelkeeper
does not have are skipped with their reason, listed in ``skips.json``.
"""

import json
import os
from pathlib import Path

import pytest

os.environ["JUPYTER_PLATFORM_DIRS"] = "1"

_SKIPS = json.loads((Path(__file__).parent / "skips.json").read_text())


@pytest.fixture(autouse=True)
def jp_environ(tmp_path, monkeypatch):
    for var, sub in (("JUPYTER_DATA_DIR", "data"), ("JUPYTER_CONFIG_DIR", "config")):
        d = tmp_path / sub
        d.mkdir()
        monkeypatch.setenv(var, str(d))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # ipc sockets named "test-N" land here


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = _SKIPS.get(item.nodeid.split("::", 1)[1]) or _SKIPS.get(item.name)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))

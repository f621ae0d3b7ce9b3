"""Root conftest for jupyter_client's own manager and client tests run against kernelkeeper.

Copied to the top of the extracted tree as ``conftest.py`` (upstream's own
``tests/conftest.py`` stays in place, its imports rewritten). It does two
things upstream's CI environment does for upstream:

* installs a kernelspec named ``echo`` (``tests/kernels/echo.py`` of
  kernelkeeper) in each test's Jupyter data directory, as upstream's client
  tests expect (they skip themselves without it);
* skips the tests listed in ``skips.json`` (substring of the test id ->
  reason): jupyter_client machinery kernelkeeper does not have.
"""

import json
import os
import sys
from pathlib import Path

import pytest

os.environ["JUPYTER_PLATFORM_DIRS"] = "1"

_HERE = Path(__file__).parent
_SKIPS = json.loads((_HERE / "skips.json").read_text())
_ECHO = os.environ.get("KK_ECHO_KERNEL", "")


@pytest.fixture(autouse=True)
def _echo_kernelspec(request):
    try:
        request.getfixturevalue("jp_environ")  # upstream's isolated Jupyter dirs first
    except pytest.FixtureLookupError:
        return
    from jupyter_core.paths import jupyter_data_dir

    if not _ECHO:
        return
    d = Path(jupyter_data_dir()) / "kernels" / "echo"
    d.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, _ECHO, "-f", "{connection_file}"],
        "display_name": "Echo",
        "language": "echo",
    }
    (d / "kernel.json").write_text(json.dumps(spec))


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fragment, reason in _SKIPS.items():
            if fragment in item.nodeid:
                item.add_marker(pytest.mark.skip(reason=reason))
                break

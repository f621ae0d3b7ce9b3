"""jupyter_client's own kernel-manager, client and restarter tests, run against kernelkeeper.

The test files come from jupyter_client's sdists, downloaded at test time
with pip into a cache (``KK_TEST_CACHE``, see ``tests/test_upstream_mkm.py``):
8.10.0's ``tests/test_kernelmanager.py``, ``test_client.py`` and
``test_restarter.py``, and 5.3.5's public-API lifecycle tests
(``test_kernelmanager.py``, ``test_client.py``), with the test kernels they
start (``signalkernel.py``, ``problemkernel.py``). Only their imports are
rewritten (:data:`REWRITES`): jupyter_client's managers become kernelkeeper's,
and the few other names go through ``tests/upstream/jc_shim.py``. No
assertion is touched. They run under pytest in a subprocess, with upstream's
own ``conftest.py`` (and pytest_jupyter's fixtures, their imports rewritten
the same way). Skipped: only tests of jupyter_client machinery kernelkeeper
does not have, each with its reason (:data:`SKIPS`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from test_upstream_mkm import sdist

HERE = Path(__file__).resolve().parent
UPSTREAM = HERE / "upstream"

SUBCLASS = (
    "traitlets subclass machinery: counts calls of jupyter_client's internal methods "
    "(RecordCallMixin on KernelManager subclasses)"
)
THREADED = (
    "traitlets subclass machinery: jupyter_client's ThreadedKernelClient with channel "
    "classes swapped through traitlets Type traits"
)
PRIVATE = "tests a private jupyter_client helper (jupyter_client.client.validate_string_dict)"

STARTS_BOUND = (
    "deliberate difference: kernelkeeper's start_kernel returns once the kernel has bound "
    "its ports, so a kernel that dies while starting fails the start (KernelDiedError) "
    "instead of being left to the restarter as jupyter_client's start does"
)

SKIPS: dict[str, dict[str, str]] = {
    "8.10.0": {
        "KMSubclass": SUBCLASS,  # the async_km fixture's subclass parameter
        "test_subclass_callables": SUBCLASS,
        "TestThreadedKernelClient": THREADED,
        "test_validate_string_dict": PRIVATE,
        "test_restarter_gives_up": STARTS_BOUND,
        "test_async_restarter_gives_up": STARTS_BOUND,
    },
    "5.3.5": {
        "TestKernelClient::test_shutdown": (
            "does not apply to today's kernels: a second shutdown_request right after the "
            "first is never answered by ipykernel 7.4 (jupyter_client 8.10 itself times out "
            "here too)"
        ),
    },
}

#: Per version: the package the files go in (the kernelspecs in the tests name
#: their kernels as modules of it), and sdist member -> file name.
LAYOUT: dict[str, tuple[str, dict[str, str]]] = {
    "8.10.0": (
        "tests",
        {
            "tests/conftest.py": "conftest.py",
            "tests/test_kernelmanager.py": "test_kernelmanager.py",
            "tests/test_client.py": "test_client.py",
            "tests/test_restarter.py": "test_restarter.py",
            "tests/signalkernel.py": "signalkernel.py",
            "tests/problemkernel.py": "problemkernel.py",
        },
    ),
    "5.3.5": (
        "jc535",
        {
            "jupyter_client/tests/test_kernelmanager.py": "test_kernelmanager.py",
            "jupyter_client/tests/test_client.py": "test_client.py",
            "jupyter_client/tests/signalkernel.py": "signalkernel.py",
        },
    ),
}
#: Our stand-ins for upstream's helper modules, per version: file in tests/upstream -> name.
STAND_INS = {
    "8.10.0": {"jc_utils.py": "utils.py", "jc_shim.py": "jc_shim.py"},
    "5.3.5": {"jc535_utils.py": "utils.py", "jc_shim.py": "jc_shim.py"},
}

REWRITES = [
    (
        "from jupyter_client import AsyncKernelManager, KernelManager",
        "from kernelkeeper import AsyncKernelManager, KernelManager",
    ),
    ("from jupyter_client import KernelManager", "from kernelkeeper import KernelManager"),
    (
        "from jupyter_client.manager import _ShutdownStatus, start_new_async_kernel, "
        "start_new_kernel",
        "from .jc_shim import _ShutdownStatus, start_new_async_kernel, start_new_kernel",
    ),
    (
        "from jupyter_client.manager import KernelManager, start_new_async_kernel, "
        "start_new_kernel",
        "from kernelkeeper import KernelManager\n"
        "from .jc_shim import start_new_async_kernel, start_new_kernel",
    ),
    (
        "from jupyter_client.manager import start_new_async_kernel",
        "from .jc_shim import start_new_async_kernel",
    ),
    (
        "from jupyter_client.client import validate_string_dict",
        "from .jc_shim import validate_string_dict",
    ),
    (
        "from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel, NATIVE_KERNEL_NAME",
        "from .jc_shim import KernelSpecManager, NoSuchKernel, NATIVE_KERNEL_NAME",
    ),
    (
        "from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel",
        "from .jc_shim import KernelSpecManager, NoSuchKernel",
    ),
    (
        "from jupyter_client.kernelspec import NATIVE_KERNEL_NAME",
        "from .jc_shim import NATIVE_KERNEL_NAME",
    ),
    (
        "from jupyter_client.threaded import ThreadedKernelClient, ThreadedZMQSocketChannel",
        "from .jc_shim import ThreadedKernelClient, ThreadedZMQSocketChannel",
    ),
    (
        "from jupyter_client.ioloop import AsyncIOLoopKernelManager, IOLoopKernelManager",
        "from .jc_shim import AsyncIOLoopKernelManager, IOLoopKernelManager",
    ),
    ("from ..manager import start_new_kernel", "from .jc_shim import start_new_kernel"),
    ("from ipython_genutils.py3compat import string_types", "from .jc_shim import string_types"),
    # pytest_jupyter's jupyter_client plugin, copied into the package (below).
    ('"pytest_jupyter.jupyter_client"', '"tests.jp_client"'),
    # 5.3.5 names its test kernel as a module of jupyter_client's own test package.
    ("'jupyter_client.tests.signalkernel'", "'jc535.signalkernel'"),
]

_IMPORT_OF_JC = re.compile(r"^\s*(from|import)\s+(jupyter_client|ipython_genutils)\b", re.M)


def rewrite(source: str) -> str:
    for old, new in REWRITES:
        source = source.replace(old, new)
    left = _IMPORT_OF_JC.findall(source)
    assert not left, f"imports of jupyter_client left unrewritten: {left}"
    return source


def extract(version: str, dest: Path) -> Path:
    """The upstream files, imports rewritten, in their package under ``dest``."""
    package, files = LAYOUT[version]
    pkg = dest / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    with tarfile.open(sdist(version)) as tar:
        for member, name in files.items():
            f = tar.extractfile(f"jupyter_client-{version}/{member}")
            assert f is not None, f"{member} not in the sdist"
            (pkg / name).write_text(rewrite(f.read().decode()))
    for src, name in STAND_INS[version].items():
        shutil.copy(UPSTREAM / src, pkg / name)
    if version == "8.10.0":
        import pytest_jupyter.jupyter_client as plugin

        (pkg / "jp_client.py").write_text(rewrite(Path(plugin.__file__).read_text()))
    shutil.copy(UPSTREAM / "jc_client_root_conftest.py", dest / "conftest.py")
    (dest / "skips.json").write_text(json.dumps(SKIPS[version]))
    (dest / "pytest.ini").write_text("[pytest]\nasyncio_mode = strict\n")
    return pkg


def _summary(out: str) -> str:
    lines = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|skipped)", ln)]
    return lines[-1] if lines else ""


@pytest.mark.timeout(2400)  # dozens of kernel lifecycles, escalations of 5 s, on a loaded machine
@pytest.mark.parametrize("version", ["8.10.0", "5.3.5"])
def test_jupyter_client_manager_and_client_suites(version: str, tmp_path: Path) -> None:
    pkg = extract(version, tmp_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH", "")) if p)
    env["KK_ECHO_KERNEL"] = str(HERE / "kernels" / "echo.py")
    # pytest_jupyter runs the coroutine tests itself (upstream's setup), not pytest-asyncio.
    cmd = [sys.executable, "-m", "pytest", str(pkg), "-q", "-rs", "-p", "no:cacheprovider"]
    cmd += ["-p", "no:asyncio", "-o", "timeout=300", "--rootdir", str(tmp_path)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2400)
    out = r.stdout[-12000:] + r.stderr[-4000:]
    print(f"jupyter_client {version}: {_summary(r.stdout)}")
    assert r.returncode == 0, out
    assert " passed" in r.stdout, out
    reasons = set(SKIPS[version].values())
    skipped = [ln for ln in r.stdout.splitlines() if ln.startswith("SKIPPED [")]
    unexpected = [ln for ln in skipped if not any(reason in ln for reason in reasons)]
    # Upstream's own skips (Windows-only, "IPC transport is currently not working", ...)
    # come with upstream's reasons; anything else skipped is a surprise.
    assert all(_upstream_skip(ln) for ln in unexpected), out


def _upstream_skip(line: str) -> bool:
    return any(
        why in line
        for why in ("Windows", "not working for this test", "Zmq closing socket", "win32")
    )

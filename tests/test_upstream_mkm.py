"""jupyter_client's own multi-kernel manager tests, run against kernelkeeper.

The test file comes from jupyter_client's sdist (8.10.0 and 5.3.5), downloaded
once with pip into a cache (``KK_TEST_CACHE``, default
``~/.cache/kernelkeeper-tests``). Its imports are rewritten so that
``MultiKernelManager``, ``AsyncMultiKernelManager``, ``KernelManager`` and
``AsyncKernelManager`` are kernelkeeper's, and it runs under pytest in a
subprocess (tornado's ``gen_test`` drives the async ones, as upstream). In
the ``jupyter_client-mkm`` mode the multi-kernel managers stay jupyter_client's
own, with kernelkeeper's ``KernelManager``/``AsyncKernelManager`` as their
``kernel_manager_class`` (``tests/upstream/jc_mkm_shim.py``): the seam
jupyter_server's MappingKernelManager uses. The ``interop`` mode does the same
with ``kernelkeeper.jupyter_client_interop``'s classes (jupyter_client
subclasses that run kernelkeeper's managers), which the test's own
``isinstance`` checks then name too.
Skipped: only the tests of jupyter_client machinery kernelkeeper does not
have, each with its reason (``SKIPS``). The subprocess shares this test's
runtime dir, so the leak check of ``conftest.py`` covers it too.
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

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("KK_TEST_CACHE", Path.home() / ".cache" / "kernelkeeper-tests"))

SUBCLASS = (
    "traitlets subclass machinery: counts calls of jupyter_client's internal methods "
    "(RecordCallMixin on KernelManager/MultiKernelManager subclasses)"
)

STREAM = (
    "jupyter_client's own MultiKernelManager calls km.connect_iopub() and this test "
    "needs the ZMQStream of jupyter_client's IOLoopKernelManager; kernelkeeper's "
    "manager returns a plain zmq socket there, as jupyter_client's KernelManager does "
    "(kernelkeeper's multi-kernel manager returns ZMQStreams: the test passes in the "
    "kernelkeeper mode)"
)

#: Upstream's own skips, with upstream's reasons (8.10.0 skips
#: ``test_start_parallel_process_kernels`` on Linux).
UPSTREAM_SKIPS = ("Windows", "win32", "Kernel refuses to start in process pool")

#: Skipped only when jupyter_client's multi-kernel managers drive ours.
JC_MKM_SKIPS: dict[str, dict[str, str]] = {
    "8.10.0": {
        "TestKernelManager::test_stream_on_recv": STREAM,
        "TestAsyncKernelManager::test_stream_on_recv": STREAM,
    },
    "5.3.5": {},
}

SKIPS: dict[str, dict[str, str]] = {
    "8.10.0": {
        "TestKernelManager::test_subclass_callables": SUBCLASS,
        "TestAsyncKernelManager::test_subclass_callables": SUBCLASS,
    },
    "5.3.5": {},
}

# Where each sdist keeps the test file, and the import rewrites it needs.
LAYOUT = {
    "8.10.0": "tests/test_multikernelmanager.py",
    "5.3.5": "jupyter_client/tests/test_multikernelmanager.py",
}
REWRITES = [
    (
        "from jupyter_client import AsyncKernelManager, KernelManager",
        "from kernelkeeper import AsyncKernelManager, KernelManager",
    ),
    ("from jupyter_client import KernelManager", "from kernelkeeper import KernelManager"),
    (
        "from jupyter_client.multikernelmanager import AsyncMultiKernelManager, MultiKernelManager",
        "from kernelkeeper.multikernel import AsyncMultiKernelManager\n"
        "from kernelkeeper.blocking_multi import MultiKernelManager",
    ),
    (
        "from jupyter_client.multikernelmanager import MultiKernelManager",
        "from kernelkeeper.blocking_multi import MultiKernelManager",
    ),
    ("from jupyter_client.localinterfaces import localhost", "from .utils import localhost"),
    ("from ..localinterfaces import localhost", "from .utils import localhost"),
]


def sdist(version: str) -> Path:
    """jupyter_client's sdist from the cache, downloaded with pip the first time."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"jupyter_client-{version}.tar.gz"
    if path.is_file():
        return path
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += [f"jupyter_client=={version}", "-d", str(CACHE)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 or not path.is_file():
        pytest.fail(
            f"Could not download jupyter_client {version}'s sdist (offline?). Put "
            f"jupyter_client-{version}.tar.gz in {CACHE} or set KK_TEST_CACHE.\n"
            f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        )
    return path


#: The multi-kernel managers' imports in the ``jupyter_client-mkm`` mode.
JC_MKM_REWRITES = [
    (
        "from jupyter_client.multikernelmanager import AsyncMultiKernelManager, MultiKernelManager",
        "from .jc_mkm_shim import AsyncMultiKernelManager, MultiKernelManager",
    ),
    (
        "from jupyter_client.multikernelmanager import MultiKernelManager",
        "from .jc_mkm_shim import MultiKernelManager",
    ),
]


#: In the ``interop`` mode, the test's own ``KernelManager``/``AsyncKernelManager``
#: (its isinstance checks) are the interop classes too.
INTEROP_REWRITES = [
    (
        "from jupyter_client import AsyncKernelManager, KernelManager",
        "from kernelkeeper.jupyter_client_interop import AsyncKernelManager, KernelManager",
    ),
    (
        "from jupyter_client import KernelManager",
        "from kernelkeeper.jupyter_client_interop import KernelManager",
    ),
]

#: mode -> the kernel managers jc_mkm_shim.py gives jupyter_client's multi-kernel managers.
SHIM_MANAGERS = {"jupyter_client-mkm": "core", "interop": "interop"}


def skips_for(version: str, mode: str) -> dict[str, str]:
    extra = JC_MKM_SKIPS[version] if mode in SHIM_MANAGERS else {}
    return {**SKIPS[version], **extra}


def rewrites_for(mode: str) -> list[tuple[str, str]]:
    if mode == "kernelkeeper":
        return REWRITES
    return JC_MKM_REWRITES + (INTEROP_REWRITES if mode == "interop" else []) + REWRITES


def extract_tests(version: str, dest: Path, mode: str = "kernelkeeper") -> Path:
    """The upstream test file, imports rewritten, in a package of its own under ``dest``."""
    member = f"jupyter_client-{version}/{LAYOUT[version]}"
    with tarfile.open(sdist(version)) as tar:
        f = tar.extractfile(member)
        assert f is not None, f"{member} not in the sdist"
        source = f.read().decode()
    for old, new in rewrites_for(mode):
        source = source.replace(old, new)
    left = source.replace("jupyter_client's", "").replace("jupyter_client_interop", "")
    assert "jupyter_client" not in left, "an import of jupyter_client was left unrewritten"
    pkg = dest / f"jc_{version.replace('.', '_')}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "test_multikernelmanager.py").write_text(source)
    shutil.copy(HERE / "upstream" / "jc_utils.py", pkg / "utils.py")
    shutil.copy(HERE / "upstream" / "jc_conftest.py", pkg / "conftest.py")
    shutil.copy(HERE / "upstream" / "jc_mkm_shim.py", pkg / "jc_mkm_shim.py")
    (pkg / "skips.json").write_text(json.dumps(skips_for(version, mode)))
    (dest / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
    )
    return pkg


@pytest.mark.timeout(1200)  # ~30 kernel lifecycles in a subprocess; minutes on a loaded machine
@pytest.mark.parametrize("mode", ["kernelkeeper", "jupyter_client-mkm", "interop"])
@pytest.mark.parametrize("version", ["8.10.0", "5.3.5"])
def test_jupyter_client_multikernelmanager_suite(version: str, mode: str, tmp_path: Path) -> None:
    pkg = extract_tests(version, tmp_path, mode)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH", "")) if p)
    env["KK_MKM_KERNEL_MANAGERS"] = SHIM_MANAGERS.get(mode, "core")
    env["ASYNC_TEST_TIMEOUT"] = "120"  # tornado's gen_test: 5 s is too short on a loaded machine
    cmd = [sys.executable, "-m", "pytest", str(pkg), "-q", "-rs", "-p", "no:cacheprovider"]
    cmd += ["-o", "timeout=300", "--rootdir", str(tmp_path)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    out = r.stdout[-8000:] + r.stderr[-4000:]
    print(f"jupyter_client {version} ({mode}): {_summary(r.stdout)}")  # shown with -s
    assert r.returncode == 0, out
    assert " passed" in r.stdout, out
    reasons = set(skips_for(version, mode).values())
    skipped = [ln for ln in r.stdout.splitlines() if ln.startswith("SKIPPED [")]
    # Anything skipped is one of ours, with its reason, or upstream's own platform skip.
    unexpected = [ln for ln in skipped if not any(why in ln for why in reasons)]
    assert all(any(why in ln for why in UPSTREAM_SKIPS) for ln in unexpected), out


def _summary(out: str) -> str:
    """pytest's last line: ``N passed, M skipped in T s``."""
    lines = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|skipped)", ln)]
    return lines[-1] if lines else ""

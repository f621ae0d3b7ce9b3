"""Run a check as an unprivileged user, for tests of permission errors.

CI runs as root, where chmod does not stop reads, so a test that needs a file
to be unreadable runs its check in a child Python that drops to nobody first.
Import as ``from privdrop import open_dir, run_as_unprivileged``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

NOBODY = 65534


def run_as_unprivileged(code: str, env: dict[str, str]) -> Any:
    """Run ``code`` in a child Python and return the JSON it prints last.

    When we are root (as in CI), where chmod does not stop reads, the child
    drops to nobody (uid/gid 65534) after importing kernelkeeper, so permission
    bits are enforced. ``code`` runs with ``ks`` (kernelkeeper.kernelspec),
    ``conn`` (kernelkeeper.connection) and ``out`` (a dict printed as JSON).
    """
    drop = ""
    if os.geteuid() == 0:
        drop = f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
    script = (
        "import json, logging, os, sys\n"
        "import kernelkeeper.connection as conn\n"
        "import kernelkeeper.kernelspec as ks\n"
        "records = []\n"
        "class H(logging.Handler):\n"
        "    def emit(self, r): records.append(r.getMessage())\n"
        "logging.getLogger('kernelkeeper').addHandler(H())\n"
        "logging.getLogger('kernelkeeper').setLevel(logging.WARNING)\n"
        f"{drop}"
        "out = {}\n"
        f"{code}\n"
        "out['warnings'] = records\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the unprivileged child may traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="kk-perm-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        # Give back what the test took away, so the tree can be removed. The
        # walk is top-down: each directory is opened up before it is entered.
        d.chmod(0o755)
        for root, dirs, _files in os.walk(d):
            for name in dirs:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o755)
        shutil.rmtree(d)

"""Test kernel: ipykernel that leaves child processes behind.

Before the kernel starts it spawns ``KK_TEST_CHILDREN`` (int, default 2)
``python -c "import time; time.sleep(3600)"`` children in its own process group
(no new session; stdio on /dev/null) and, once they are running, writes their
pids as a JSON list to the file named by ``KK_TEST_CHILDREN_FILE`` (atomically:
temp file + os.replace; nothing is written if the variable is unset). The file
therefore exists before the kernel answers its first request.

Unlike stock ipykernel, the kernel does not SIGTERM/SIGKILL its process-group
children when it handles shutdown_request, and it never waits on them: only
whoever kills the process group gets rid of them. (A SIGINT to the group, e.g.
a signal-mode interrupt or ipykernel's own interrupt_request, does kill them:
they are plain Python processes.)

Usage: python spawn_children.py -f <connection_file>
"""

import json
import os
import subprocess
import sys

# Popen objects are kept here so they are never garbage-collected or waited on.
_CHILDREN: list = []


def spawn_children(count: int) -> list[int]:
    for _ in range(count):
        _CHILDREN.append(
            subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(3600)"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return [p.pid for p in _CHILDREN]


def write_pids(path: str, pids: list[int]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(pids, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import KeepChildrenKernel, env_int, launch

    pids = spawn_children(max(0, env_int("KK_TEST_CHILDREN", 2)))
    pids_file = os.environ.get("KK_TEST_CHILDREN_FILE")
    if pids_file:
        write_pids(pids_file, pids)
    launch(kernel_class=KeepChildrenKernel)


if __name__ == "__main__":
    main()

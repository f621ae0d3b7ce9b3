"""Wrapper (not a kernel) that mimics ``conda run --no-capture-output``.

Runs its arguments as a *child* (same process group, inherited stdio and
environment, fds above 2 not inherited: ``subprocess`` closes them), forwards
SIGINT and SIGTERM to it, waits for it and exits with its exit code (128+N if
a signal N killed it). Usage: python run_as_child.py <command> [args...]
"""

import signal
import subprocess
import sys


def main() -> int:
    if len(sys.argv) < 2:
        raise SystemExit("usage: run_as_child.py <command> [args...]")
    child = subprocess.Popen(sys.argv[1:])

    def forward(signum: int, frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, forward)
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())

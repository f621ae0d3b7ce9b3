"""Test kernel: the kernel that needs SIGKILL.

ipykernel with SIGTERM set to SIG_IGN (from the very start, before the app is
initialized) that also ignores shutdown_request on control and shell (no reply,
no exit). No environment variables.

Usage: python ignore_term.py -f <connection_file>
"""

import os
import sys


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import NoShutdownKernel, ignore_sigterm, launch

    ignore_sigterm()
    launch(kernel_class=NoShutdownKernel)


if __name__ == "__main__":
    main()

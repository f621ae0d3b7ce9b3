"""Test kernel: ipykernel that ignores shutdown_request.

A shutdown_request on the control or the shell channel gets no reply and the
kernel keeps running (everything else works normally). With
``KK_TEST_IGNORE_SIGTERM=1`` it also ignores SIGTERM, so only SIGKILL stops it.

Usage: python no_shutdown_reply.py -f <connection_file>
"""

import os
import sys


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import NoShutdownKernel, env_flag, ignore_sigterm, launch

    if env_flag("KK_TEST_IGNORE_SIGTERM"):
        ignore_sigterm()
    launch(kernel_class=NoShutdownKernel)


if __name__ == "__main__":
    main()

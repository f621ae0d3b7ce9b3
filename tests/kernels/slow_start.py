"""Test kernel: a normal ipykernel that starts late.

Sleeps ``KK_TEST_START_DELAY`` seconds (float, default 2.0) before it binds any
socket or reads the connection file, then runs a stock IPKernelApp.

Usage: python slow_start.py -f <connection_file>
"""

import os
import sys
import time


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import env_float, launch

    time.sleep(max(0.0, env_float("KK_TEST_START_DELAY", 2.0)))
    launch()


if __name__ == "__main__":
    main()

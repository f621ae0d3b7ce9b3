"""Test kernel: ipykernel whose heartbeat never answers.

The heartbeat port is bound (connects succeed) but pings are never echoed.
Shell, control, iopub and stdin work normally. No environment variables.

Usage: python no_heartbeat.py -f <connection_file>
"""

import os
import sys


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import SilentHeartbeatApp, launch

    launch(app_class=SilentHeartbeatApp)


if __name__ == "__main__":
    main()

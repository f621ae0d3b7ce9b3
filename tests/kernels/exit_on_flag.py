"""Test kernel: a normal ipykernel, or exit_on_start.py while a flag file exists.

``KK_TEST_EXIT_FLAG`` (path): if that file exists when the process starts, it
does what ``exit_on_start.py`` does (the same stderr lines, exit code
``KK_TEST_EXIT_CODE``, default 3, binds nothing); otherwise it is a normal
ipykernel. A test starts it, creates the file, and from then on every
restart dies while starting. Unset: always a normal ipykernel.

Usage: python exit_on_flag.py -f <connection_file>
"""

import os
import sys


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    flag = os.environ.get("KK_TEST_EXIT_FLAG", "").strip()
    if flag and os.path.exists(flag):
        import exit_on_start

        sys.exit(exit_on_start.main())
    from _common import launch

    launch()


if __name__ == "__main__":
    main()

"""Test kernel: dies at startup without ever binding a socket.

Optionally sleeps ``KK_TEST_EXIT_AFTER`` seconds (float, unset = no sleep), then
writes a few lines to stderr ending with
``exit_on_start: simulated failure (code N)`` and exits with code
``KK_TEST_EXIT_CODE`` (int, default 3).

Imports neither zmq nor ipykernel. Usage: python exit_on_start.py -f <connection_file>
"""

import os
import sys
import time


def main() -> int:
    code = int(os.environ.get("KK_TEST_EXIT_CODE", "").strip() or 3)
    delay = os.environ.get("KK_TEST_EXIT_AFTER", "").strip()
    if delay:
        time.sleep(max(0.0, float(delay)))
    err = sys.stderr
    err.write(f"exit_on_start: pid {os.getpid()}, argv {sys.argv[1:]!r}\n")
    err.write("exit_on_start: this test kernel never binds a socket\n")
    err.write("Traceback (most recent call last):\n")
    err.write('  File "exit_on_start.py", line 1, in <module>\n')
    err.write("RuntimeError: simulated kernel startup failure\n")
    err.write(f"exit_on_start: simulated failure (code {code})\n")
    err.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Test kernel: ignores the signals named in ``KK_TEST_IGNORE_SIGNALS``.

``KK_TEST_IGNORE_SIGNALS``: comma-separated names (default ``SIGUSR1``), each set
to ``SIG_IGN`` before ipykernel starts (so a group signal of that kind leaves the
kernel running). Otherwise a normal ipykernel.
Usage: python ignore_signals.py -f <connection_file>
"""

import os
import signal
import sys


def main() -> None:
    # Imported here: importing this script must not import ipykernel or zmq.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import launch

    names = os.environ.get("KK_TEST_IGNORE_SIGNALS", "SIGUSR1")
    for name in filter(None, (n.strip() for n in names.split(","))):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    launch()


if __name__ == "__main__":
    main()

"""Test kernel: ipykernel that ignores SIGINT sent from outside.

``kill -INT <pid>`` (or SIGINT to its process group) never interrupts running
code. An ``interrupt_request`` on the control channel (message-mode interrupt)
still works: ipykernel handles it by sending SIGINT to itself, and this kernel
lets exactly those self-sent signals through. Set
``KK_TEST_IGNORE_MESSAGE_INTERRUPT=1`` to make message-mode interrupts no-ops
too (the reply is still ``status: ok``, as stock ipykernel with SIGINT at
SIG_IGN would behave).

Usage: python ignore_sigint.py -f <connection_file>
"""

import os
import sys


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import SigintProofKernel, launch

    launch(kernel_class=SigintProofKernel)


if __name__ == "__main__":
    main()

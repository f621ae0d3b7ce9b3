"""Wrapper (not a kernel): closes every inherited fd above 2, then execs its arguments.

Like ``sudo`` (closefrom) or a login shell that cleans up, it drops whatever
the manager handed down besides stdin/stdout/stderr. Environment untouched.
Usage: python close_fds.py <command> [args...]
"""

import os
import sys


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: close_fds.py <command> [args...]")
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()

"""Test kernel: its first N starts fail with a real "Address already in use".

Each start increments the counter in ``KK_TEST_PORT_TAKEN_COUNTER`` (a file
holding the number of starts so far; written with a temp file + ``os.replace``).
While that number is at most ``KK_TEST_PORT_TAKEN_TIMES`` (int, default 1), the
shell port is taken before ipykernel binds it, so ipykernel's own bind fails
with ``zmq.error.ZMQError: Address already in use`` and the process exits with
code 1, as a kernel whose pre-assigned port was taken by someone else does:

* ``KK_TEST_TAKEN_PORT`` set: the kernel is told to use that port for shell
  (``--shell=PORT``, which wins over the connection file), a port the test
  holds open, i.e. a collision with another process;
* unset: the kernel itself listens on the shell port of its connection file
  first (a plain TCP socket).

Later starts are a normal ipykernel. Without ``KK_TEST_PORT_TAKEN_COUNTER`` it
is always a normal ipykernel. Usage: python port_taken.py -f <connection_file>
"""

import json
import os
import socket
import sys

_held: list[socket.socket] = []  # kept open until the process exits


def _count_start(path: str) -> int:
    try:
        with open(path) as f:
            n = int(f.read().strip() or 0)
    except FileNotFoundError:
        n = 0
    n += 1
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(n))
    os.replace(tmp, path)
    return n


def _connection_file() -> str:
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg == "-f" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("-f="):
            return arg[3:]
    raise SystemExit("port_taken: no -f <connection_file>")


def main() -> None:
    # Imported here: importing this script must not import ipykernel or zmq.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import env_int, launch

    counter = os.environ.get("KK_TEST_PORT_TAKEN_COUNTER", "").strip()
    if counter and _count_start(counter) <= env_int("KK_TEST_PORT_TAKEN_TIMES", 1):
        taken = os.environ.get("KK_TEST_TAKEN_PORT", "").strip()
        if taken:
            sys.argv.append(f"--shell={int(taken)}")
        else:
            with open(_connection_file()) as f:
                info = json.load(f)
            s = socket.socket()
            s.bind((info["ip"], int(info["shell_port"])))
            s.listen()
            _held.append(s)
        sys.stderr.write("port_taken: the shell port is taken; ipykernel will fail to bind\n")
    launch()


if __name__ == "__main__":
    main()

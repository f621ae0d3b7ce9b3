"""The ``kernelkeeper`` command line: argument parsing and dispatch only.

Each command lives in a ``cli_*`` module imported when that command runs,
so that ``kernelkeeper --help`` loads nothing but argparse.

Exit status: 0 ok, 1 an error in the code (or a failed cell), 2 a usage
error or a kernelkeeper error (unknown kernel, missing file, malformed
notebook, unknown kernel id), 3 the kernel died, 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

# Not typing.TYPE_CHECKING: `--help` should not pay for importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2
EXIT_KERNEL_DIED = 3

_EPILOG = """\
examples:
  kernelkeeper run -c "print(6 * 7)"         code in a fresh default kernel
  kernelkeeper run analysis.ipynb -p n 10    a notebook, outputs written back
  kernelkeeper start --name work             a kernel that outlives the command
  kernelkeeper attach work -c "x = 1"        run code in it
  kernelkeeper ls                            the kernels started that way
  kernelkeeper stop work

exit status: 0 ok, 1 error in the code, 2 usage or kernelkeeper error,
3 kernel died, 130 stopped by Ctrl-C
"""

_POLICIES = ("disabled", "auto", "required")  # kernelkeeper.curve.POLICIES, not imported


def _lazy(module: str, func: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        import importlib

        mod = importlib.import_module(f"kernelkeeper.{module}")
        return int(getattr(mod, func)(args))

    return run


def _run(args: argparse.Namespace) -> int:
    if args.file and args.file.endswith(".ipynb") and args.code is None:
        return int(_lazy("cli_notebook", "cmd_notebook")(args))
    return int(_lazy("cli_run", "cmd_run")(args))


def _kernel_opts(p: argparse.ArgumentParser, timeout_help: str | None) -> None:
    p.add_argument(
        "-k",
        "--kernel",
        default="",
        metavar="KERNEL",
        help="kernel type (see `kernelkeeper specs`; default: this interpreter's Python)",
    )
    p.add_argument(
        "--encryption",
        default="auto",
        choices=_POLICIES,
        help="CurveZMQ for tcp kernels (default: auto, when the kernel supports it)",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds the kernel gets to start (default: 60)",
    )
    if timeout_help:
        p.add_argument("--timeout", type=float, default=None, metavar="S", help=timeout_help)
    p.add_argument("--cwd", default=None, metavar="DIR", help="the kernel's working directory")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    p = argparse.ArgumentParser(
        prog="kernelkeeper",
        description="Find, launch and control Jupyter kernels.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, aliases in (("specs", ["list"]),):
        sp = sub.add_parser(
            name, aliases=aliases, help="list the kernel types (and the broken kernelspecs)"
        )
        sp.add_argument("--json", action="store_true", help="print JSON")
        sp.set_defaults(func=_lazy("cli_specs", "cmd_specs"))

    run = sub.add_parser(
        "run",
        help="run code, a script or a notebook in a fresh kernel",
        description="Run code, a script or a notebook (FILE ending in .ipynb) in a fresh "
        "kernel. Ctrl-C interrupts the kernel, a second Ctrl-C stops it.",
    )
    run.add_argument("file", nargs="?", metavar="FILE", help="script or notebook (default: stdin)")
    run.add_argument("-c", "--code", help="code to run")
    _kernel_opts(run, "seconds a cell (or the code) may run (default: no limit)")
    nb = run.add_argument_group("notebooks")
    nb.add_argument("-o", "--output", metavar="PATH", help="write here instead of in place")
    nb.add_argument("--allow-errors", action="store_true", help="run every cell even after errors")
    nb.add_argument(
        "-p",
        "--parameter",
        dest="parameters",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="inject NAME = VALUE after the cell tagged 'parameters' (repeatable)",
    )
    run.set_defaults(func=_run)

    start = sub.add_parser("start", help="start a kernel that outlives this command")
    _kernel_opts(start, None)
    start.add_argument("--name", help="a name to use instead of the id")
    start.add_argument("--transport", default="tcp", choices=("tcp", "ipc"))
    start.add_argument("--json", action="store_true", help="print JSON")
    start.set_defaults(func=_lazy("cli_kernels", "cmd_start"))

    ls = sub.add_parser("ls", help="list the kernels started with `start`")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_lazy("cli_kernels", "cmd_ls"))

    for name, text in (
        ("interrupt", "interrupt a kernel started with `start`"),
        ("restart", "restart it (same connection file, ports and key)"),
        ("stop", "stop it (shutdown_request, then SIGTERM, then SIGKILL)"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("ref", metavar="ID|NAME")
        c.add_argument(
            "--timeout", type=float, default=5.0, metavar="S", help="seconds per step (5)"
        )
        if name in ("stop", "restart"):
            c.add_argument("--now", action="store_true", help="kill at once")
        c.set_defaults(func=_lazy("cli_kernels", "cmd_control"))

    at = sub.add_parser(
        "attach",
        help="run code in a kernel started with `start` (no code: line by line from stdin)",
    )
    at.add_argument("ref", metavar="ID|NAME")
    at.add_argument("file", nargs="?", metavar="FILE", help="script to run")
    at.add_argument("-c", "--code", help="code to run")
    at.add_argument("--timeout", type=float, default=None, metavar="S")
    at.set_defaults(func=_lazy("cli_attach", "cmd_attach"))

    pr = sub.add_parser("prune", help="remove the records of kernels that died")
    pr.set_defaults(func=_lazy("cli_kernels", "cmd_prune"))

    sub.add_parser(
        "gateway", help="the kernel gateway (`kernelkeeper gateway --help`)", add_help=False
    )
    return p


def _gateway(argv: list[str]) -> int:
    try:
        from kernelkeeper import gateway
    except ImportError as e:
        print(
            f"kernelkeeper: the gateway is not available ({e}); "
            "install it with `pip install 'kernelkeeper[gateway]'`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return int(gateway.main(argv) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["gateway"]:
        # Everything after the word is the gateway's own command line.
        return _gateway(args_list[1:])
    args = build_parser().parse_args(args_list)
    from .errors import KernelDiedError, KernelError

    try:
        return int(args.func(args))
    except KernelDiedError as e:
        # The message carries the exit code or signal and the kernel's stderr tail.
        print(f"kernelkeeper: {e}", file=sys.stderr)
        return EXIT_KERNEL_DIED
    except KernelError as e:
        print(f"kernelkeeper: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not an error worth a traceback.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell tool killed by it
    except Exception as e:
        from .cli_output import UsageError

        if isinstance(e, UsageError):
            print(f"kernelkeeper: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())

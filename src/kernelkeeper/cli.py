"""The ``kernelkeeper`` command line.

kernelkeeper list                      kernel types that can be started
kernelkeeper run -c "print(1)"         run code in a fresh kernel, print its output
kernelkeeper run script.py             the same with a file
                                       (exit status: 0 ok, 1 error in the code,
                                       2 usage or kernelkeeper error, 3 kernel died)
kernelkeeper start [-k NAME]           start a kernel, print its connection file, keep it
                                       running until Ctrl-C
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .client import AsyncKernelClient, print_output
from .curve import POLICIES
from .errors import KernelDiedError, KernelError
from .finder import KernelFinder
from .kernelspec import list_kernel_specs
from .manager import AsyncKernelManager
from .session import Message

__all__ = ["main"]

#: Exit status of ``run`` when the kernel died (1 is an error in the code, 2 ours).
EXIT_KERNEL_DIED = 3


def _cmd_list(args: argparse.Namespace) -> int:
    finder = KernelFinder.from_entrypoints()
    rows = [(name, spec.display_name, spec.language) for name, spec in finder.find_kernels()]
    if args.json:
        print(
            json.dumps(
                [{"name": n, "display_name": d, "language": lang} for n, d, lang in rows], indent=1
            )
        )
    else:
        width = max((len(n) for n, _, _ in rows), default=4)
        for name, display, lang in rows:
            print(f"{name:<{width}}  {display} ({lang})")
    _, broken = list_kernel_specs()
    for path, err in broken.items():
        print(f"warning: skipped broken kernelspec {path}: {err}", file=sys.stderr)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.code is not None:
        code = args.code
    elif args.file:
        with open(args.file, encoding="utf-8") as f:
            code = f.read()
    else:
        code = sys.stdin.read()
    return asyncio.run(_run(args, code))


async def _run(args: argparse.Namespace, code: str) -> int:
    km = AsyncKernelManager(args.kernel, transport_encryption=args.encryption)
    await km.start_kernel(startup_timeout=args.timeout)
    kc: AsyncKernelClient | None = None
    try:
        kc = km.client()
        kc.start_channels(hb=False)
        await kc.wait_for_ready(timeout=args.timeout)
        result = await kc.run_cell(code, on_output=print_output, stdin_hook=_stdin_hook(kc))
        return 0 if result.status == "ok" else 1
    finally:
        if kc is not None:
            await kc.aclose()
        await km.shutdown_kernel()


def _stdin_hook(kc: AsyncKernelClient) -> Any:
    async def answer(msg: Message) -> None:
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(None, input, msg["content"].get("prompt", ""))
        kc.input(value)

    return answer


async def _start(args: argparse.Namespace) -> int:
    km = AsyncKernelManager(
        args.kernel, transport=args.transport, transport_encryption=args.encryption
    )
    await km.start_kernel(startup_timeout=args.timeout)
    try:
        await km.wait_ready(args.timeout)
        print(km.connection_file, flush=True)
        print(
            f"kernel {km.kernel_id} ready (pid {km.process.pid if km.process else '?'}); "
            "Ctrl-C to shut it down",
            file=sys.stderr,
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        proc = km.process
        assert proc is not None
        exited = asyncio.ensure_future(proc.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({exited, stopped}, return_when="FIRST_COMPLETED")
        for t in (exited, stopped):
            t.cancel()
        if exited.done() and not exited.cancelled():
            print(f"kernel exited with code {proc.exit_code}", file=sys.stderr)
            return 1
        return 0
    finally:
        await km.shutdown_kernel()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kernelkeeper", description="Find, launch and control Jupyter kernels."
    )
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list the kernel types that can be started")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_cmd_list)
    run = sub.add_parser("run", help="run code in a fresh kernel and print its output")
    run.add_argument("file", nargs="?", help="file to run (default: stdin)")
    run.add_argument("-c", "--code", help="code to run")
    run.add_argument("-k", "--kernel", default="", help="kernel type (default: python3)")
    run.add_argument("--timeout", type=float, default=60.0, help="startup timeout (s)")
    # Every client of this kernel is ours: encrypt whenever the kernel can.
    run.add_argument(
        "--encryption",
        default="auto",
        choices=POLICIES,
        help="CurveZMQ transport encryption (default: auto, when the kernel supports it)",
    )
    run.set_defaults(func=_cmd_run)
    start = sub.add_parser("start", help="start a kernel and keep it until Ctrl-C")
    start.add_argument("-k", "--kernel", default="", help="kernel type (default: python3)")
    start.add_argument("--transport", default="tcp", choices=("tcp", "ipc"))
    start.add_argument("--timeout", type=float, default=60.0, help="startup timeout (s)")
    # Off by default here: the printed connection file is for other clients,
    # and jupyter_client before 8.10 cannot speak CurveZMQ.
    start.add_argument(
        "--encryption",
        default="disabled",
        choices=POLICIES,
        help="CurveZMQ transport encryption (default: disabled, for older clients)",
    )
    start.set_defaults(func=lambda a: asyncio.run(_start(a)))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KernelDiedError as e:
        # The message carries the exit code or signal and the kernel's stderr tail.
        print(f"kernelkeeper: {e}", file=sys.stderr)
        return EXIT_KERNEL_DIED
    except KernelError as e:
        print(f"kernelkeeper: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

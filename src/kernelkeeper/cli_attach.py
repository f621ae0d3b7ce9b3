"""``kernelkeeper attach ID|NAME [-c CODE | FILE]``: run code in a running kernel.

Without code it reads stdin line by line (with a ``kk>`` prompt on a
terminal): read a line, execute it, print its outputs; Ctrl-C interrupts the running code,
Ctrl-D ends the session (the kernel keeps running). With code from
``-c``, a file or a pipe it exits as ``run`` does: 0, 1 on an error, 3 when
the kernel died.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from .cli_output import OutputPrinter
from .cli_records import Record, control, find_record
from .cli_run import EXIT_ERROR, EXIT_OK, UsageError, read_code, stdin_hook
from .client import AsyncKernelClient

__all__ = ["cmd_attach"]


def cmd_attach(args: argparse.Namespace) -> int:
    """Attach to a recorded kernel and run code in it."""
    rec = find_record(args.ref)
    if not rec.alive():
        raise UsageError(f"kernel {rec.id[:8]} is dead; `kernelkeeper prune` removes its record")
    # No code: line by line from stdin (a prompt on a terminal, a pipe works too).
    code = None if args.code is None and not args.file else read_code(args)
    return asyncio.run(_attach(rec, code, args.timeout))


async def _attach(rec: Record, code: str | None, timeout: float | None) -> int:
    # No manager of ours: death shows as a heartbeat that stops answering.
    kc = AsyncKernelClient(rec.connection_file, interrupt_mode="message", hb_max_misses=5)
    kc.start_channels()
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[Any]] = set()

    def interrupt() -> None:
        t = loop.create_task(control(rec, "interrupt"))
        pending.add(t)
        t.add_done_callback(pending.discard)

    try:
        await kc.wait_for_ready(timeout=30)
        loop.add_signal_handler(signal.SIGINT, interrupt)
        printer = OutputPrinter()
        if code is not None:
            result = await kc.run_cell(
                code, on_output=printer, stdin_hook=stdin_hook(kc), timeout=timeout
            )
            return EXIT_OK if result.status == "ok" else EXIT_ERROR
        status = EXIT_OK
        while True:
            try:
                line = await loop.run_in_executor(None, _prompt)
            except EOFError:
                if sys.stdin.isatty():
                    print(file=sys.stderr)
                return status
            if not line.strip():
                continue
            result = await kc.run_cell(line, on_output=printer, stdin_hook=stdin_hook(kc))
            if result.status != "ok":
                status = EXIT_ERROR  # a pipe of lines fails as a script would
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        for t in list(pending):
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await kc.aclose()


def _prompt() -> str:
    if sys.stdin.isatty():
        return input("kk> ")
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line

"""``kernelkeeper run``: code or a script in a fresh kernel (notebooks: cli_notebook).

:func:`with_kernel` is the one place the command line starts a kernel of
its own: CurveZMQ when the kernel supports it (so ipykernel prints no
plain-text warning), tracebacks without colour where colour is off, and
Ctrl-C handling: the first interrupts the kernel, a second (or SIGTERM)
stops it and the command ends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .cli_output import OutputPrinter, UsageError, use_color
from .client import AsyncKernelClient
from .errors import KernelError, KernelTimeoutError
from .manager import AsyncKernelManager
from .session import Message

__all__ = [
    "DEFAULT_KERNEL",
    "EXIT_DIED",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "KernelOptions",
    "UsageError",
    "cmd_run",
    "with_kernel",
]

EXIT_OK = 0
EXIT_ERROR = 1  # an error in the code
EXIT_USAGE = 2  # bad arguments or input, or a kernelkeeper error
EXIT_DIED = 3  # the kernel died
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM

#: The current interpreter's ipykernel: works on a fresh install, whatever
#: kernelspecs are (or are not) installed.
DEFAULT_KERNEL = "pyimport/kernel"

# IPython 9's name for plain tracebacks; other kernels do not get the option.
_NOCOLOR_ARGS = ("--InteractiveShell.colors=nocolor",)


@dataclass
class KernelOptions:
    """How the command line starts its kernel."""

    kernel: str = ""
    cwd: str | None = None
    encryption: str = "auto"
    startup_timeout: float = 60.0
    color: bool = True
    env: dict[str, str] | None = None


class _CtrlC:
    """SIGINT/SIGTERM while the command runs: interrupt first, then stop."""

    def __init__(self, km: AsyncKernelManager) -> None:
        self.km = km
        self.count = 0
        self.stopped = False
        self.status = EXIT_INTERRUPTED
        self.ready = False
        self.task: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def interrupt(self) -> None:
        self.count += 1
        if self.count == 1 and self.ready:
            print(
                "kernelkeeper: interrupting the kernel (Ctrl-C again to stop it)",
                file=sys.stderr,
                flush=True,
            )
            t = asyncio.get_running_loop().create_task(self._interrupt())
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        else:
            self.stop(EXIT_INTERRUPTED)

    async def _interrupt(self) -> None:
        try:
            await self.km.interrupt_kernel()
        except KernelError as e:
            print(f"kernelkeeper: cannot interrupt the kernel: {e}", file=sys.stderr)

    def stop(self, status: int) -> None:
        self.stopped = True
        self.status = status
        if self.task is not None:
            self.task.cancel()

    def terminate(self) -> None:
        self.stop(EXIT_TERMINATED)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


Body = Callable[[AsyncKernelManager, AsyncKernelClient], Awaitable[int]]


async def with_kernel(opts: KernelOptions, body: Body) -> int:
    """Start a kernel, run ``body(km, kc)`` with Ctrl-C handling, shut the kernel down.

    Returns the body's exit status, or :data:`EXIT_INTERRUPTED` after a Ctrl-C.
    """
    km = AsyncKernelManager(opts.kernel or DEFAULT_KERNEL, transport_encryption=opts.encryption)
    extra = list(_NOCOLOR_ARGS) if not opts.color and km.ipykernel else []
    loop = asyncio.get_running_loop()
    ctrl = _CtrlC(km)
    ctrl.task = asyncio.current_task()
    loop.add_signal_handler(signal.SIGINT, ctrl.interrupt)
    loop.add_signal_handler(signal.SIGTERM, ctrl.terminate)
    try:
        await km.start_kernel(
            cwd=opts.cwd, env=opts.env, extra_arguments=extra, startup_timeout=opts.startup_timeout
        )
        kc = km.client()
        kc.start_channels(hb=False)
        try:
            await kc.wait_for_ready(timeout=opts.startup_timeout)
            ctrl.ready = True
            status = await body(km, kc)
            return EXIT_INTERRUPTED if ctrl.count else status
        finally:
            await kc.aclose()
    except asyncio.CancelledError:
        if not ctrl.stopped:
            raise
        print("kernelkeeper: stopped the kernel", file=sys.stderr, flush=True)
        return ctrl.status
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        await ctrl.aclose()
        # A stop asked for by the user is at once; otherwise the kernel gets to
        # flush and exit as it should.
        await km.shutdown_kernel(now=ctrl.stopped)


def stdin_hook(kc: AsyncKernelClient) -> Callable[[Message], Awaitable[None]]:
    """Answer the kernel's input() from our stdin."""

    async def answer(msg: Message) -> None:
        loop = asyncio.get_running_loop()
        try:
            value = await loop.run_in_executor(None, input, msg["content"].get("prompt", ""))
        except EOFError:
            value = ""  # stdin is used up (or closed): the kernel must not wait forever
        kc.input(value)

    return answer


def read_code(args: argparse.Namespace) -> str:
    """The code of ``run``/``attach``: ``-c``, a file, or stdin."""
    if args.code is not None:
        return str(args.code)
    if args.file and args.file != "-":
        return read_text(args.file)
    return sys.stdin.read()


def read_text(path: str) -> str:
    """A file's text; a missing or unreadable file is a :class:`UsageError`."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory; give a file to run") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None


def cmd_run(args: argparse.Namespace) -> int:
    """``run`` of code or a script (notebooks go to :mod:`kernelkeeper.cli_notebook`)."""
    if args.code is not None and args.file:
        raise UsageError("give either -c CODE or a FILE, not both")
    nb_only = [o for o in ("output", "parameters", "allow_errors") if getattr(args, o, None)]
    if nb_only:
        opt = nb_only[0].replace("_", "-")
        raise UsageError(f"--{opt} is for notebooks (a FILE ending in .ipynb)")
    code = read_code(args)
    cwd = args.cwd
    if cwd is not None and not os.path.isdir(cwd):
        raise UsageError(f"--cwd {cwd}: no such directory")
    opts = KernelOptions(
        kernel=args.kernel,
        cwd=cwd,
        encryption=args.encryption,
        startup_timeout=args.startup_timeout,
        color=use_color(sys.stdout) and use_color(sys.stderr),
    )

    async def body(km: AsyncKernelManager, kc: AsyncKernelClient) -> int:
        try:
            result = await kc.run_cell(
                code, on_output=OutputPrinter(), stdin_hook=stdin_hook(kc), timeout=args.timeout
            )
        except KernelTimeoutError:
            print(
                f"kernelkeeper: the code did not finish within {args.timeout} s (--timeout)",
                file=sys.stderr,
            )
            await km.interrupt_kernel()  # so that it can shut down as it should
            return EXIT_ERROR
        return EXIT_OK if result.status == "ok" else EXIT_ERROR

    return asyncio.run(with_kernel(opts, body))

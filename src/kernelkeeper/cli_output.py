"""Terminal output for the command line: colour, ANSI stripping, tables, progress.

Colour follows the usual conventions: none when the stream is not a
terminal, or when ``NO_COLOR`` is set (https://no-color.org); the kernel's
own tracebacks carry ANSI codes, which are stripped there too.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["OutputPrinter", "Progress", "UsageError", "strip_ansi", "table", "use_color"]

# CSI sequences (colours, cursor moves) and OSC sequences (titles, links).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


class UsageError(Exception):
    """A mistake on the command line or in its input: exit status 2."""


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences."""
    return _ANSI.sub("", text)


def use_color(stream: IO[Any]) -> bool:
    """Should output to ``stream`` be coloured?"""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class OutputPrinter:
    """Writes a kernel's iopub outputs to stdout/stderr as they arrive.

    Text goes through unchanged on a colour terminal and without ANSI codes
    otherwise (each stream decides for itself: ``run ... 2>log`` keeps colour
    on stdout).
    """

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._color = {id(self.out): use_color(self.out), id(self.err): use_color(self.err)}

    def write(self, stream: IO[str], text: str) -> None:
        if not self._color[id(stream)]:
            text = strip_ansi(text)
        stream.write(text)
        stream.flush()

    def __call__(self, msg: Any) -> None:
        t, c = msg["msg_type"], msg["content"]
        if t == "stream":
            self.write(self.out if c.get("name") == "stdout" else self.err, c.get("text", ""))
        elif t in ("display_data", "execute_result"):
            text = c.get("data", {}).get("text/plain")
            if text is not None:
                self.write(self.out, text + "\n")
        elif t == "error":
            self.write(self.err, "\n".join(c.get("traceback", [])) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table (no borders: easy to read and to cut/awk)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal:
    items done, the current item and the elapsed time."""

    def __init__(self, total: int, stream: IO[str] | None = None, width: int = 24) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = _isatty(self.stream)
        self.t0 = time.monotonic()
        self._drawn = False

    def update(self, done: int, current: str = "") -> None:
        if not self.enabled:
            return
        frac = done / self.total if self.total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.monotonic() - self.t0
        line = f"[{bar}] {done}/{self.total} {current} {elapsed:6.1f}s"
        self.stream.write("\r\x1b[2K" + line[:200])
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Clear the bar (so later messages start on a clean line)."""
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
        self._drawn = False


def _isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

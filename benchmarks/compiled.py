"""Benchmarks measure kernelkeeper as an install has it: its modules compiled.

A regular ``pip install`` writes the ``.pyc`` files of a package; an editable
install in an environment with ``PYTHONDONTWRITEBYTECODE=1`` never does, and
then every process compiles kernelkeeper from source, paying time and memory
(the compiler's peak stays in the heap) that jupyter_client and Kernel
Gateway, compiled when installed, do not. Each benchmark calls
:func:`compile_package` first, so both sides start from bytecode.
"""

from __future__ import annotations

import compileall
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "kernelkeeper"


def compile_package() -> None:
    """Write the ``.pyc`` files of kernelkeeper's modules (a no-op when current)."""
    compileall.compile_dir(str(PACKAGE), quiet=1)

"""Small helpers shared by the test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

KERNELS_DIR = Path(__file__).resolve().parent / "kernels"


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value.

    Raises ``TimeoutError`` if it is still falsy after ``timeout`` seconds (the
    predicate is always evaluated at least once, and once more at the deadline).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"condition {predicate!r} not met within {timeout} s")
        time.sleep(min(interval, remaining))


def kernel_script(name: str) -> str:
    """Absolute path of the test kernel script ``tests/kernels/<name>.py``."""
    filename = name if name.endswith(".py") else f"{name}.py"
    path = KERNELS_DIR / filename
    if not path.is_file():
        raise FileNotFoundError(f"no test kernel script {path}")
    return str(path)

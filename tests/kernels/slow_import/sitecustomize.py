"""Test helper: makes any Python process that has this directory on PYTHONPATH start late.

Python imports ``sitecustomize`` at startup, before the main module runs. Put
this directory on ``PYTHONPATH`` in a kernelspec's ``env`` and an unmodified
``python -m ipykernel_launcher`` kernel (which kernelkeeper starts through its
handshake launcher) sleeps before it binds anything, like a kernel whose
imports are slow. Not part of kernelkeeper; never imports it.

``KK_TEST_START_DELAY``: seconds (float) to sleep. ``KK_TEST_START_DELAY_FILE``:
a file holding the seconds, read at startup (missing file: no delay), so a
test can make only a later start (a restart) slow.
"""

import os
import time


def _delay() -> float:
    path = os.environ.get("KK_TEST_START_DELAY_FILE", "")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return float(f.read().strip() or 0)
        except OSError:
            return 0.0
    raw = os.environ.get("KK_TEST_START_DELAY", "").strip()
    return float(raw) if raw else 0.0


time.sleep(max(0.0, _delay()))

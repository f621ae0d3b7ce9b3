"""Keep benchmarks/bench_gateway.py from rotting: one quick workload, both gateways.

The benchmark is not part of the test suite; this only checks that the script
still runs end to end against kernelkeeper's gateway and Jupyter Kernel
Gateway, prints both columns, and leaves nothing behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gateway.py"

pytest.importorskip("kernel_gateway")


def _row(table: str, label: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith(label):
            return cells
    raise AssertionError(f"no row {label!r} in:\n{table}")


@pytest.mark.timeout(300)
def test_bench_gateway_quick_roundtrip() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "roundtrip", "--calls", "5"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr[-3000:]}"
    assert "| workload | kernelkeeper gateway min / median / max |" in out, out
    assert "jupyter-kernel-gateway 3." in out  # the machine header
    triple = re.compile(r"^[0-9.]+ / [0-9.]+ / [0-9.]+ ms$")
    _label, kk, kg, ratio, _target, met = _row(out, 'WebSocket execute("1+1")')
    assert triple.match(kk), f"kernelkeeper figures missing: {kk!r}"
    assert triple.match(kg), f"Kernel Gateway figures missing: {kg!r}"
    assert re.fullmatch(r"[0-9.]+", ratio), ratio
    assert met in ("yes", "**NO**"), met
    direct = _row(out, "direct kernelkeeper client")
    assert triple.match(direct[1]), direct
    assert "- leftovers: 0" in out, out

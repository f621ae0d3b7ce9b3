"""Keep benchmarks/bench.py from rotting: run one quick workload and read its table.

The benchmark itself is not part of the test suite; this only checks that the
script still runs end to end against both libraries and prints both columns.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"

pytest.importorskip("jupyter_client")


def _row(table: str, label: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in:\n{table}")


def test_bench_quick_roundtrip() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "roundtrip", "--calls", "20"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr[-3000:]}"
    assert "| workload | kk min / median / max | jc min / median / max |" in out, out
    assert "jupyter_client" in out and "ipykernel" in out  # the machine header

    number = r"[0-9]+(\.[0-9]+)?"
    triple = re.compile(rf"^{number} / {number} / {number} ms$")
    for label in ("kernel_info round trip", 'execute("1+1") round trip (shell reply)'):
        _label, kk, jc, ratio, _target, met = _row(out, label)
        assert triple.match(kk), f"kernelkeeper figures missing: {kk!r}"
        assert triple.match(jc), f"jupyter_client figures missing: {jc!r}"
        assert re.fullmatch(number, ratio), ratio
        assert met in ("yes", "**NO**"), met
    assert "- leftovers: 0 kernel processes, 0 connection files" in out, out

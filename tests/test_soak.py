"""Soak: 50 mixed cycles (restarts, interrupts, SIGKILLs, dying cells) leak nothing.

Runs ``benchmarks/soak.py`` in this process, so the fds and threads measured
are the test process's own; conftest's leak check runs after it as well.
Every death case must end the pending wait with ``KernelDiedError``; a wait
that runs into its deadline instead is a failure, and the run stops after a
few of them so that a hang costs tens of seconds, not minutes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SOAK_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kk_soak", SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


soak = _load_soak()


async def test_soak_50_cycles_leak_nothing(isolated_runtime: Path) -> None:
    report = await soak.run_soak(
        cycles=50,
        seed=20261121,
        warmup=3,
        op_timeout=15.0,
        startup_timeout=60.0,
        max_failures=3,
        # Not one long time.sleep: a SIGINT that Linux hands to another thread
        # of the kernel only takes effect once such a sleep ends (see soak.py).
        interrupt_cell="sleep-loop",
        runtime_dir=str(isolated_runtime),
    )
    table = soak.render(report)
    assert not report.failures, f"unexpected outcomes:\n{table}"
    assert report.cycles == 50, table
    # The deck holds every kind several times over: 50 cycles saw each of them.
    assert all(c.cycles > 0 for c in report.kinds.values()), table
    for kind in soak.DEATHS:
        assert report.kinds[kind].died == report.kinds[kind].cycles, table
    growth = report.growth()
    assert growth["fds"] <= 0, f"fds grew:\n{table}"
    assert growth["threads"] <= 0, f"threads grew:\n{table}"
    assert growth["rss_mib"] < soak.RSS_GROWTH_LIMIT_MIB, f"RSS grew:\n{table}"
    assert not report.leftover_processes, table
    assert not report.leftover_files, table
    assert report.passed, table

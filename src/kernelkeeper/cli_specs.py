"""``kernelkeeper specs`` (alias ``list``): the kernel types that can be started,
and the kernelspecs that cannot, with the reason."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from .cli_output import table
from .finder import KernelFinder
from .kernelspec import list_kernel_specs

__all__ = ["cmd_specs", "collect_specs"]


def collect_specs() -> list[dict[str, Any]]:
    """One entry per kernel type (``status: ok``) and per broken kernelspec (``broken``)."""
    # We list broken specs ourselves; the library's warnings would say it twice.
    logging.getLogger("kernelkeeper").setLevel(logging.ERROR)
    finder = KernelFinder.from_entrypoints()
    rows: list[dict[str, Any]] = []
    for kernel_type, spec in finder.find_kernels():
        provider = kernel_type.partition("/")[0]
        source = spec.resource_dir or ("this interpreter" if provider == "pyimport" else "")
        rows.append(
            {
                "name": kernel_type,
                "display_name": spec.display_name,
                "language": spec.language,
                "source": source,
                "argv": list(spec.argv),
                "status": "ok",
            }
        )
    _, broken = list_kernel_specs()
    for path, err in sorted(broken.items()):
        rows.append(
            {
                "name": _spec_name(path),
                "display_name": "",
                "language": "",
                "source": path,
                "argv": [],
                "status": "broken",
                "reason": str(err),
            }
        )
    return rows


def _spec_name(path: str) -> str:
    parts = path.rstrip("/").split("/")
    if parts[-1] == "kernel.json" and len(parts) >= 2:
        return "spec/" + parts[-2].lower()
    return "spec/?"


def cmd_specs(args: argparse.Namespace) -> int:
    """Print the kernel types as a table, or as JSON with ``--json``."""
    rows = collect_specs()
    if args.json:
        print(json.dumps({"kernels": rows}, indent=1))
        return 0
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] == "broken"]
    print(
        table(
            ("NAME", "DISPLAY NAME", "LANGUAGE", "FROM"),
            [(r["name"], r["display_name"], r["language"], r["source"]) for r in ok],
        )
    )
    if bad:
        print()
        print(
            table(("BROKEN", "WHERE", "WHY"), [(r["name"], r["source"], r["reason"]) for r in bad])
        )
    return 0

"""``start``, ``ls``, ``interrupt``, ``restart``, ``stop`` and ``prune``: kernels
that outlive the command (records in :mod:`kernelkeeper.cli_records`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

from .cli_output import UsageError, table
from .cli_records import (
    Record,
    control,
    find_record,
    launch_detached,
    list_records,
    log_path,
    process_stats,
)
from .cli_run import DEFAULT_KERNEL
from .connection import connection_file_path

__all__ = ["cmd_control", "cmd_ls", "cmd_prune", "cmd_start"]


def cmd_start(args: argparse.Namespace) -> int:
    """Start a kernel that outlives the command; print its id and connection file."""
    from .finder import default_finder

    name = args.name or ""
    if name:
        if any(r.name == name and r.alive() for r in list_records()):
            raise UsageError(f"a running kernel is already named {name!r}; choose another --name")
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise UsageError(f"--name {name!r}: use letters, digits, '-', '_' and '.'")
    cwd = os.path.abspath(args.cwd or os.getcwd())
    if not os.path.isdir(cwd):
        raise UsageError(f"--cwd {cwd}: no such directory")
    kernel = args.kernel or DEFAULT_KERNEL
    spec = default_finder().get_spec(kernel)
    kernel_id = str(uuid.uuid4())
    cf = connection_file_path(kernel_id)
    log = log_path(kernel_id)
    try:
        pid, create_time = asyncio.run(
            launch_detached(
                spec,
                kernel_id,
                cf,
                log,
                cwd,
                args.startup_timeout,
                transport=args.transport,
                encryption=args.encryption,
            )
        )
    except BaseException:
        if os.path.exists(log):
            os.unlink(log)
        raise
    rec = Record(
        id=kernel_id,
        name=name,
        kernel=kernel,
        spec=spec.name,
        language=spec.language,
        pid=pid,
        create_time=create_time,
        connection_file=cf,
        log=log,
        cwd=cwd,
        interrupt_mode=spec.interrupt_mode,
        transport=args.transport,
    )
    rec.save()
    if args.json:
        print(json.dumps({"id": kernel_id, "name": name, "connection_file": cf, "pid": pid}))
    else:
        print(kernel_id)
        print(cf)
        label = f" {name!r}" if name else ""
        print(
            f"kernelkeeper: kernel{label} running (pid {pid}); "
            f"stop it with `kernelkeeper stop {name or kernel_id[:8]}`",
            file=sys.stderr,
        )
    return 0


def _uptime(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def describe(records: list[Record]) -> list[dict[str, Any]]:
    """Each record with its kernel's state, uptime, memory and CPU."""
    stats = process_stats(records)
    now = time.time()
    out = []
    for r in records:
        s = stats.get(r.id)
        out.append(
            {
                "id": r.id,
                "name": r.name,
                "kernel": r.kernel,
                "spec": r.spec,
                "pid": r.pid,
                "state": s["status"] if s else "dead",
                "uptime": now - r.create_time if s else None,  # since the (re)start
                "rss": s["rss"] if s else None,
                "cpu_percent": s["cpu_percent"] if s else None,
                "cpu_time": s["cpu_time"] if s else None,
                "processes": s["processes"] if s else 0,
                "connection_file": r.connection_file,
                "log": r.log,
                "cwd": r.cwd,
                "restarts": r.restarts,
                "record": r.path,
            }
        )
    return out


def cmd_ls(args: argparse.Namespace) -> int:
    """List the recorded kernels."""
    rows = describe(list_records())
    if args.json:
        print(json.dumps({"kernels": rows}, indent=1))
        return 0
    if not rows:
        print("no kernels (start one with `kernelkeeper start`)", file=sys.stderr)
        return 0
    dash = "-"
    print(
        table(
            ("ID", "NAME", "KERNEL", "PID", "STATE", "UPTIME", "MEMORY", "CPU"),
            [
                (
                    r["id"][:8],
                    r["name"] or dash,
                    r["kernel"],
                    str(r["pid"]),
                    r["state"],
                    _uptime(r["uptime"]) if r["uptime"] is not None else dash,
                    _size(r["rss"]) if r["rss"] is not None else dash,
                    f"{r['cpu_percent']:.0f}%" if r["cpu_percent"] is not None else dash,
                )
                for r in rows
            ],
        )
    )
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    """``interrupt``, ``restart`` or ``stop`` a recorded kernel."""
    rec = find_record(args.ref)
    action = args.command
    if action != "stop" and not rec.alive():
        raise UsageError(f"kernel {rec.id[:8]} is dead; `kernelkeeper prune` removes its record")
    now = bool(getattr(args, "now", False))
    what = asyncio.run(control(rec, action, now=now, timeout=args.timeout))
    label = f"{rec.id[:8]} ({rec.name})" if rec.name else rec.id[:8]
    print(f"kernel {label}: {what}", file=sys.stderr)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Remove the records (and leftover files) of kernels that are gone."""
    removed = 0
    for rec in list_records():
        if not rec.alive():
            rec.remove()
            removed += 1
            print(f"removed {rec.id[:8]}" + (f" ({rec.name})" if rec.name else ""))
    if not removed:
        print("nothing to prune: every recorded kernel is running", file=sys.stderr)
    return 0

#!/usr/bin/env python
"""kernelkeeper's gateway vs Jupyter Kernel Gateway 3 (jupyter-websocket mode), in one run.

Run from the repository root with the project's virtualenv::

    .venv/bin/python benchmarks/bench_gateway.py            # full run (a few minutes)
    .venv/bin/python benchmarks/bench_gateway.py --quick    # smoke-sized run
    .venv/bin/python benchmarks/bench_gateway.py --only start,roundtrip --json out.json

Both gateways run as processes on 127.0.0.1 (``python -m kernelkeeper.gateway``
and ``python -m kernel_gateway``), with the same ``python3`` kernelspec, each
with a private runtime dir; this script is their only client. Workloads
alternate between the two where they can (kk, KG, then KG, kk, ...):

* ``start``: POST /api/kernels until the first kernel_info_reply on a new
  WebSocket to the kernel; and the same on a kernelkeeper gateway with a warm
  pool (``--pool python3=2``), where the kernel is taken from the pool. Our
  gateway runs with its defaults, so its kernels are forked from a fork-server
  template (``--kk-arg=--no-fork-server`` measures spawned kernels instead).
* ``roundtrip``: execute ``1+1`` over the WebSocket until its execute_reply,
  on one kernel per gateway; in the same rotation a direct kernelkeeper client
  (``AsyncKernelClient`` on the kernel's connection file) to the kernel behind
  our gateway: what the gateway adds is the difference.
* ``concurrent``: 32 WebSocket clients on 8 kernels (4 each), 50 cells each,
  all at once: wall time, and replies lost (none within the timeout) or
  misrouted (a reply or output on a socket that did not ask for it, or the
  wrong output).
* ``idle``: RSS of the gateway process with 0 and with 16 idle kernels.

Prints the machine and a markdown table; the ratio is kernelkeeper / Kernel
Gateway (below 1: kernelkeeper is faster or smaller). The last line says
what was left over (processes, connection files); the exit status is non-zero
if a workload failed or something was left over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from compiled import compile_package
from gateway_harness import Gateway, WsKernel, start_gateway

KERNEL = "python3"
TIMEOUT = 60.0  # per request: a hung step fails the workload, not the run
LABELS = {"kk": "kernelkeeper gateway", "kg": "Kernel Gateway 3"}
WORKLOADS = ("start", "roundtrip", "concurrent", "idle")


@dataclass
class Params:
    starts: int = 8
    calls: int = 200
    kernels: int = 8
    clients: int = 32
    cells: int = 50
    idle: int = 16
    pool: int = 2

    @classmethod
    def quick(cls) -> Params:
        return cls(starts=2, calls=20, kernels=2, clients=4, cells=10, idle=4, pool=1)


@dataclass
class Row:
    label: str
    kk: str
    kg: str
    ratio: str = "—"
    target: str = "—"
    met: str = "—"


@dataclass
class Run:
    params: Params
    rows: list[Row] = field(default_factory=list)
    samples: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[bench_gateway {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def triple(xs: list[float]) -> str:
    if not xs:
        return "—"
    return f"{fmt(min(xs))} / {fmt(statistics.median(xs))} / {fmt(max(xs))} ms"


def ratio_row(label: str, kk: list[float], kg: list[float], limit: float | None) -> Row:
    row = Row(label, triple(kk), triple(kg))
    if kk and kg:
        r = statistics.median(kk) / statistics.median(kg)
        row.ratio = f"{r:.2f}"
        if limit is not None:
            row.target, row.met = f"≤ {limit}", "yes" if r <= limit else "**NO**"
    return row


class Client:
    """HTTP and WebSocket calls to one gateway."""

    def __init__(self, http: aiohttp.ClientSession, gw: Gateway) -> None:
        self.http = http
        self.gw = gw

    async def post_kernel(self) -> str:
        url = f"{self.gw.url}/api/kernels"
        async with self.http.post(url, json={"name": KERNEL}, headers=self.gw.headers()) as r:
            if r.status != 201:
                raise RuntimeError(
                    f"{self.gw.kind}: POST /api/kernels: {r.status} {await r.text()}"
                )
            return str((await r.json())["id"])

    async def delete_kernel(self, kernel_id: str) -> None:
        url = f"{self.gw.url}/api/kernels/{kernel_id}"
        async with self.http.delete(url, headers=self.gw.headers()) as r:
            if r.status != 204:
                raise RuntimeError(f"{self.gw.kind}: DELETE: {r.status} {await r.text()}")

    async def ws(self, kernel_id: str) -> WsKernel:
        return await WsKernel.connect(self.http, self.gw.ws_url, kernel_id, self.gw.headers())

    async def ready_ws(self, kernel_id: str) -> WsKernel:
        """A WebSocket on which the kernel has answered kernel_info."""
        ws = await self.ws(kernel_id)
        msg_id = await ws.send("kernel_info_request", {})
        try:
            await ws.wait_for_type(msg_id, "kernel_info_reply", TIMEOUT)
        except TimeoutError as e:
            await ws.close()
            raise TimeoutError(f"{self.gw.kind}: {e}") from None
        return ws

    async def start_to_reply(self) -> tuple[float, str]:
        """POST /api/kernels → the first kernel_info_reply on a new WebSocket (ms)."""
        t0 = time.perf_counter()
        kernel_id = await self.post_kernel()
        ws = await self.ready_ws(kernel_id)
        ms = (time.perf_counter() - t0) * 1000
        await ws.close()
        return ms, kernel_id

    async def metric(self, name: str) -> float:
        async with self.http.get(f"{self.gw.url}/metrics", headers=self.gw.headers()) as r:
            text = await r.text()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def wait_until(pred: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        await asyncio.sleep(0.05)


# --- workloads ------------------------------------------------------------------------


async def bench_start(run: Run, kk: Client, kg: Client, kk_pool: Client) -> None:
    times: dict[str, list[float]] = {"kk": [], "kg": []}
    for c in (kk, kg):  # untimed warm-up
        _, kid = await c.start_to_reply()
        await c.delete_kernel(kid)
    for i in range(run.params.starts):
        order = (("kk", kk), ("kg", kg)) if i % 2 == 0 else (("kg", kg), ("kk", kk))
        for lib, c in order:
            ms, kid = await c.start_to_reply()
            times[lib].append(ms)
            await c.delete_kernel(kid)
        log(f"start {i + 1}/{run.params.starts}: kk {times['kk'][-1]:.0f} ms, "
            f"kg {times['kg'][-1]:.0f} ms")  # fmt: skip
    run.samples["start"] = times
    run.rows.append(
        ratio_row(
            "POST /api/kernels → first kernel_info_reply on the WebSocket",
            times["kk"],
            times["kg"],
            0.5,
        )
    )

    # Pool hits: before each take the pool is full again and has settled.
    gw = kk_pool.gw
    hits: list[float] = []
    taken = ""
    hits0 = await kk_pool.metric("kernelkeeper_pool_hits_total")
    for i in range(run.params.starts):
        full = functools.partial(_pool_full, gw, taken, run.params.pool)
        await wait_until(full, TIMEOUT, "pool refill")
        # A pooled kernel's file exists from its start on; give it time to be ready,
        # as a pooled kernel normally is long before it is taken (bench only).
        await asyncio.sleep(3.0)
        ms, kid = await kk_pool.start_to_reply()
        hits.append(ms)
        await kk_pool.delete_kernel(kid)
        taken = f"kernel-{kid}.json"
        log(f"pool take {i + 1}/{run.params.starts}: {ms:.1f} ms")
    n_hits = await kk_pool.metric("kernelkeeper_pool_hits_total") - hits0
    run.samples["pool"] = {"take_ms": hits, "hits": n_hits}
    row = Row(
        f"same, warm-pool hit (kk `--pool {KERNEL}={run.params.pool}`; KG: cold start)",
        triple(hits) + f" ({int(n_hits)} of {len(hits)} hits)",
        triple(times["kg"]),
    )
    if hits and times["kg"]:
        row.ratio = f"{statistics.median(hits) / statistics.median(times['kg']):.2f}"
        ok = statistics.median(hits) <= 20 and n_hits == len(hits)
        row.target, row.met = "kk ≤ 20 ms", "yes" if ok else "**NO**"
    run.rows.append(row)


async def _pool_full(gw: Gateway, taken: str, size: int) -> bool:
    """The last kernel taken is gone and the pool has its size again (files exist)."""
    files = gw.kernel_files()
    return taken not in files and len(files) >= size


def connection_file(gw: Gateway, kernel_id: str) -> Path:
    found = list(gw.runtime_dir.rglob(f"kernel-{kernel_id}.json"))
    if not found:
        raise RuntimeError(f"no connection file for {kernel_id} under {gw.runtime_dir}")
    return found[0]


async def bench_roundtrip(run: Run, kk: Client, kg: Client) -> None:
    import kernelkeeper

    kk_id, kg_id = await kk.post_kernel(), await kg.post_kernel()
    ws = {"kk": await kk.ready_ws(kk_id), "kg": await kg.ready_ws(kg_id)}
    direct = kernelkeeper.AsyncKernelClient(str(connection_file(kk.gw, kk_id)))
    direct.start_channels()
    times: dict[str, list[float]] = {"kk": [], "kg": [], "direct": []}

    async def via_ws(lib: str) -> float:
        t0 = time.perf_counter()
        msg_id = await ws[lib].send_execute("1+1")
        await ws[lib].wait_until(msg_id, lambda r: r.reply is not None, "execute_reply", TIMEOUT)
        ms = (time.perf_counter() - t0) * 1000
        # The next request starts once this one is over on the kernel too.
        await ws[lib].wait(msg_id, TIMEOUT)
        return ms

    async def via_direct() -> float:
        t0 = time.perf_counter()
        await direct.execute("1+1", reply=True, timeout=TIMEOUT)
        ms = (time.perf_counter() - t0) * 1000
        # Untimed: drain the iopub messages nobody reads, so the queue never overflows.
        with contextlib.suppress(queue.Empty):
            while True:
                await direct.get_iopub_msg(timeout=0)
        return ms

    try:
        await direct.wait_for_ready(timeout=TIMEOUT)
        for _ in range(5):  # warm-up
            await via_ws("kk"), await via_ws("kg"), await via_direct()
        for i in range(run.params.calls):
            steps = ["kk", "kg", "direct"]
            steps = steps if i % 2 == 0 else steps[::-1]
            for s in steps:
                times[s].append(await via_direct() if s == "direct" else await via_ws(s))
    finally:
        await direct.aclose()
        for w in ws.values():
            await w.close()
        await kk.delete_kernel(kk_id)
        await kg.delete_kernel(kg_id)
    run.samples["roundtrip"] = times
    run.rows.append(
        ratio_row('WebSocket execute("1+1") → execute_reply', times["kk"], times["kg"], 0.2)
    )
    row = Row(
        "direct kernelkeeper client, same kernel as the kk gateway's (KG column: KG via WS)",
        triple(times["direct"]),
        triple(times["kg"]),
    )
    if times["direct"] and times["kk"]:
        extra = statistics.median(times["kk"]) - statistics.median(times["direct"])
        row.ratio = f"kk WS - direct: {extra:+.2f} ms"
        row.target, row.met = "≤ 2 ms", "yes" if extra <= 2 else "**NO**"
    run.rows.append(row)


async def concurrent_once(c: Client, p: Params) -> tuple[float, int, int]:
    """Wall ms, lost and misrouted replies for clients x cells on p.kernels kernels."""
    ids = await asyncio.gather(*(c.post_kernel() for _ in range(p.kernels)))
    sockets = [await c.ready_ws(ids[i % p.kernels]) for i in range(p.clients)]
    lost = misrouted = 0

    async def client(n: int, ws: WsKernel) -> None:
        nonlocal lost, misrouted
        for cell in range(p.cells):
            marker = f"{n}:{cell}"
            msg_id = await ws.send_execute(f"print({marker!r})")
            try:
                res = await ws.wait(msg_id, TIMEOUT)
            except (TimeoutError, ConnectionError):
                lost += 1
                continue
            if res.stdout != marker + "\n" or res.status != "ok":
                misrouted += 1

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(n, ws) for n, ws in enumerate(sockets)))
        wall = (time.perf_counter() - t0) * 1000
        misrouted += sum(len(ws.unmatched) for ws in sockets)
    finally:
        for ws in sockets:
            await ws.close()
        for kid in ids:
            await c.delete_kernel(kid)
    return wall, lost, misrouted


async def bench_concurrent(run: Run, kk: Client, kg: Client) -> None:
    p = run.params
    walls: dict[str, list[float]] = {"kk": [], "kg": []}
    bad: dict[str, list[int]] = {"kk": [0, 0], "kg": [0, 0]}
    for lib, c in (("kk", kk), ("kg", kg), ("kg", kg), ("kk", kk)):
        wall, lost, misrouted = await concurrent_once(c, p)
        walls[lib].append(wall)
        bad[lib][0] += lost
        bad[lib][1] += misrouted
        log(f"concurrent {lib}: {wall:.0f} ms, {lost} lost, {misrouted} misrouted")
    run.samples["concurrent"] = {"wall_ms": walls, "lost_misrouted": bad}
    what = f"{p.clients} WS clients on {p.kernels} kernels x {p.cells} cells"
    run.rows.append(ratio_row(f"{what}, wall", walls["kk"], walls["kg"], 0.7))
    n = 2 * p.clients * p.cells
    row = Row(
        f"{what}: lost / misrouted replies (of {n} per gateway)",
        f"{bad['kk'][0]} / {bad['kk'][1]}",
        f"{bad['kg'][0]} / {bad['kg'][1]}",
    )
    row.target, row.met = "kk 0 / 0", "yes" if bad["kk"] == [0, 0] else "**NO**"
    run.rows.append(row)


async def idle_rss(c: Client, n: int) -> tuple[float, float]:
    """RSS (MiB) of the gateway process with no kernel, then with n idle kernels."""
    rss0 = c.gw.server.rss() / 2**20
    ids: list[str] = []
    try:
        for _ in range(0, n, 4):  # 4 at a time, so that 2 cores cope
            ids += await asyncio.gather(*(c.post_kernel() for _ in range(min(4, n - len(ids)))))
        for kid in ids:
            await (await c.ready_ws(kid)).close()
        await asyncio.sleep(3.0)  # settle (bench only)
        return rss0, c.gw.server.rss() / 2**20
    finally:
        for kid in ids:
            await c.delete_kernel(kid)


async def bench_idle(run: Run, kk: Client, kg: Client) -> None:
    n = run.params.idle
    kk0, kkn = await idle_rss(kk, n)
    log(f"idle RSS: kk {kk0:.1f} → {kkn:.1f} MiB")  # kept if KG's part fails
    kg0, kgn = await idle_rss(kg, n)
    log(f"idle RSS: kk {kk0:.1f} → {kkn:.1f} MiB, kg {kg0:.1f} → {kgn:.1f} MiB")
    run.samples["idle"] = {"kk": [kk0, kkn], "kg": [kg0, kgn]}
    run.rows.append(Row("gateway RSS, 0 kernels (after the other workloads)",
                        f"{kk0:.1f} MiB", f"{kg0:.1f} MiB", f"{kk0 / kg0:.2f}"))  # fmt: skip
    r = kkn / kgn
    run.rows.append(Row(f"gateway RSS, {n} idle kernels", f"{kkn:.1f} MiB", f"{kgn:.1f} MiB",
                        f"{r:.2f}", "≤ 0.6", "yes" if r <= 0.6 else "**NO**"))  # fmt: skip


# --- the run --------------------------------------------------------------------------


def machine() -> list[str]:
    def v(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    mem = psutil.virtual_memory().total / 2**30
    return [
        f"- machine: {psutil.cpu_count()} logical / {psutil.cpu_count(logical=False)} physical "
        f"cores, {mem:.1f} GiB RAM, {platform.system()} {platform.release()} {platform.machine()}",
        f"- Python {platform.python_version()}; kernelkeeper {v('kernelkeeper')}, "
        f"jupyter-kernel-gateway {v('jupyter-kernel-gateway')}, aiohttp {v('aiohttp')}, "
        f"jupyter_client {v('jupyter_client')}, ipykernel {v('ipykernel')}, "
        f"pyzmq {v('pyzmq')}; kernel spec `{KERNEL}`",
    ]


def table(rows: list[Row]) -> str:
    out = [
        f"| workload | {LABELS['kk']} min / median / max | {LABELS['kg']} min / median / max "
        "| ratio (kk/KG median) | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    out += [f"| {r.label} | {r.kk} | {r.kg} | {r.ratio} | {r.target} | {r.met} |" for r in rows]
    return "\n".join(out)


async def run_all(run: Run, only: list[str], tmp: Path, kk_args: list[str]) -> list[str]:
    gateways: list[Gateway] = []
    leftovers: list[str] = []
    try:
        log("starting the gateways")
        kk_gw = start_gateway("kernelkeeper", tmp / "kk", extra_args=kk_args)
        gateways.append(kk_gw)
        kg_gw = start_gateway("kernel_gateway", tmp / "kg")
        gateways.append(kg_gw)
        pool_gw = None
        if "start" in only:
            pool_gw = start_gateway(
                "kernelkeeper", tmp / "kk-pool", pool={KERNEL: run.params.pool}, extra_args=kk_args
            )
            gateways.append(pool_gw)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT * 3)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            kk, kg = Client(http, kk_gw), Client(http, kg_gw)
            steps: dict[str, Callable[[], Awaitable[None]]] = {
                "start": lambda: bench_start(run, kk, kg, Client(http, pool_gw)),  # type: ignore[arg-type]
                "roundtrip": lambda: bench_roundtrip(run, kk, kg),
                "concurrent": lambda: bench_concurrent(run, kk, kg),
                "idle": lambda: bench_idle(run, kk, kg),
            }
            for name in WORKLOADS:
                if name not in only:
                    continue
                log(f"workload {name}")
                try:
                    await steps[name]()
                except Exception as e:  # one failed workload must not lose the others
                    run.errors.append(f"{name}: {type(e).__name__}: {e}")
                    log(traceback.format_exc())
    finally:
        for gw in gateways:
            leftovers += gw.stop()
    return leftovers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke-sized run")
    ap.add_argument("--only", default=",".join(WORKLOADS), help=f"any of {','.join(WORKLOADS)}")
    ap.add_argument("--json", default=None, help="also write the raw samples here")
    ap.add_argument("--starts", type=int, default=None, help="timed starts per gateway")
    ap.add_argument("--calls", type=int, default=None, help="round trips per gateway")
    ap.add_argument(
        "--kk-arg",
        action="append",
        default=[],
        help="an extra argument for the kernelkeeper gateways (repeatable)",
    )
    args = ap.parse_args(argv)
    compile_package()
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = sorted(set(only) - set(WORKLOADS))
    if unknown:
        ap.error(f"unknown workloads {unknown}")
    run = Run(Params.quick() if args.quick else Params())
    if args.starts is not None:
        run.params.starts = args.starts
    if args.calls is not None:
        run.params.calls = args.calls
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kkgwbench-") as tmp:
        os.environ.setdefault("IPYTHONDIR", os.path.join(tmp, "ipython"))
        leftovers = asyncio.run(run_all(run, only, Path(tmp), args.kk_arg))
    print("\n".join(machine()))
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    kk = " ".join(args.kk_arg) or "defaults (fork server on)"
    print(f"- parameters: {json.dumps(vars(run.params))}; kk gateway: {kk}; "
          f"{time.monotonic() - t0:.0f} s; load average at the end {load}\n")  # fmt: skip
    print(table(run.rows))
    print()
    for err in run.errors:
        print(f"ERROR {err}")
    print(f"- leftovers: {len(leftovers)}" + "".join(f"\n  - {x}" for x in leftovers))
    if args.json:
        data = {"params": vars(run.params), "samples": run.samples, "errors": run.errors,
                "rows": [vars(r) for r in run.rows], "leftovers": leftovers}  # fmt: skip
        Path(args.json).write_text(json.dumps(data, indent=1))
    return 1 if run.errors or leftovers else 0


if __name__ == "__main__":
    sys.exit(main())

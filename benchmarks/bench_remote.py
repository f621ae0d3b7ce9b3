"""Start to ready of a Slurm kernel, next to ``srun true`` on the same cluster.

``srun true`` is the scheduler's own cost of a job (allocation, launch, end);
the difference to a kernel's start-to-ready is what kernelkeeper and
ipykernel add (batch script, interpreter and ipykernel start, registration,
kernel_info). A local kernel's start to ready is shown for scale: most of
the difference is the interpreter and ipykernel starting, wherever they run.
Needs a cluster (``.ci/setup-slurm.sh``; SLURM_CONF set).

    .venv/bin/python benchmarks/bench_remote.py --repeat 7

Prints one markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time

from kernelkeeper import AsyncKernelClient, async_start_new_kernel
from kernelkeeper.provider_slurm import SlurmProvider


async def kernel_start(job_name: str) -> float:
    started = time.perf_counter()
    info, km = await SlurmProvider().launch(
        "python3", startup_timeout=120, remote_options={"job_name": job_name}
    )
    kc = AsyncKernelClient(info, manager=km)
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        elapsed = time.perf_counter() - started
    finally:
        await kc.aclose()
        await km.cleanup()
    return elapsed


async def local_start() -> float:
    started = time.perf_counter()
    km, kc = await async_start_new_kernel(kernel_name="python3", startup_timeout=60)
    elapsed = time.perf_counter() - started
    await kc.aclose()
    await km.shutdown_kernel(now=True)
    return elapsed


def srun_true() -> float:
    started = time.perf_counter()
    subprocess.run(["srun", "--job-name=kk-bench-srun", "true"], check=True, timeout=120)
    return time.perf_counter() - started


def row(name: str, samples: list[float]) -> str:
    return (
        f"| {name} | {min(samples) * 1000:.0f} | {statistics.median(samples) * 1000:.0f} "
        f"| {max(samples) * 1000:.0f} | {len(samples)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("SLURM_CONF", "/tmp/kk-slurm/slurm.conf")
    srun_true()  # warm-up: the first job pays for slurmd's first launch
    asyncio.run(kernel_start("kk-bench"))
    kernel, srun, local = [], [], []
    for _ in range(args.repeat):  # alternating, so load drifts hit all alike
        kernel.append(asyncio.run(kernel_start("kk-bench")))
        srun.append(srun_true())
        local.append(asyncio.run(local_start()))
    print(f"cores: {os.cpu_count()}, load: {os.getloadavg()[0]:.1f}")
    print("| workload | min ms | median ms | max ms | n |")
    print("|---|---|---|---|---|")
    print(row("Slurm kernel: start to ready (`slurm/python3`)", kernel))
    print(row("`srun true` on the same cluster", srun))
    print(row("local kernel: start to ready (`python3`), for scale", local))
    overhead = statistics.median(kernel) - statistics.median(srun)
    print(f"\nkernel minus srun (medians): {overhead * 1000:.0f} ms")


if __name__ == "__main__":
    main()

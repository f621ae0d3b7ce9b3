#!/usr/bin/env python
"""The command line: ``kernelkeeper run nb.ipynb`` against ``jupyter execute nb.ipynb``,
and ``kernelkeeper --help`` start-up.

Run from the repository root with the project's virtualenv::

    .venv/bin/python benchmarks/bench_cli.py              # 8 repetitions each
    .venv/bin/python benchmarks/bench_cli.py --repeat 3 --cells 30

Each repetition runs each command once, alternating which goes first, on a
fresh copy of the same 30-cell notebook (small cells: arithmetic, prints, a
display, an import), with the same kernelspec (``python3``) and an isolated
Jupyter runtime directory; both write the outputs back (``jupyter execute
--inplace``, as ``kernelkeeper run`` does by default). Wall time is measured
around the whole process, start-up and shutdown included, as a user sees it.
Prints one markdown table:
min / median / max, the ratio of the medians, the target, met or not. The
floor row is ``python -c pass`` with the same interpreter, the least any
console script can take.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from compiled import compile_package

BIN = Path(sys.executable).parent
KERNEL = "python3"


def notebook(path: Path, cells: int) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    sources = [
        "import math",
        "x = sum(range(1000))\nx",
        "print('cell', x)",
        "from IPython.display import display\ndisplay({'a': 1})",
        "[math.sqrt(i) for i in range(5)]",
    ]
    nb.cells = [nbformat.v4.new_code_cell(sources[i % len(sources)]) for i in range(cells)]
    nbformat.write(nb, str(path))


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def stats(xs: Sequence[float]) -> str:
    ms = [x * 1000 for x in xs]
    return f"{min(ms):.0f} / {statistics.median(ms):.0f} / {max(ms):.0f} ms"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--cells", type=int, default=30)
    ap.add_argument("--help-repeat", type=int, default=20)
    args = ap.parse_args(argv)
    compile_package()
    kk = str(BIN / "kernelkeeper")
    jx = shutil.which("jupyter-execute", path=str(BIN)) or str(BIN / "jupyter-execute")
    with tempfile.TemporaryDirectory(prefix="kkbench-") as tmp:
        root = Path(tmp)
        runtime = root / "rt"
        runtime.mkdir()
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime))
        template = root / "template.ipynb"
        notebook(template, args.cells)
        # Warm-up: file caches, bytecode, the kernelspec look-up.
        for argv in ([kk, "run", "w.ipynb"], [jx, "--inplace", "w.ipynb"]):
            shutil.copy(template, root / "w.ipynb")
            timed(argv, env, root)
        times: dict[str, list[float]] = {"kk": [], "jc": []}
        for i in range(args.repeat):
            order = ("kk", "jc") if i % 2 == 0 else ("jc", "kk")
            for lib in order:
                nb = root / f"{lib}.ipynb"
                shutil.copy(template, nb)
                cmd = [kk, "run", nb.name] if lib == "kk" else [jx, "--inplace", nb.name]
                times[lib].append(timed(cmd, env, root))
        helps = [timed([kk, "--help"], env, root) for _ in range(args.help_repeat)]
        floor = [timed([sys.executable, "-c", "pass"], env, root) for _ in range(args.help_repeat)]
        left = sorted(p.name for p in runtime.iterdir())
    ratio = statistics.median(times["kk"]) / statistics.median(times["jc"])
    help_median = statistics.median(helps) * 1000
    print(
        f"CPython {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"{args.repeat} repetitions, {args.cells} cells"
    )
    print()
    print("| workload | kk min / median / max | jc min / median / max | ratio | target | met? |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.cells}-cell notebook: `kernelkeeper run` vs `jupyter execute` (wall) "
        f"| {stats(times['kk'])} | {stats(times['jc'])} | {ratio:.2f} | ≤ 0.5 "
        f"| {'yes' if ratio <= 0.5 else '**NO**'} |"
    )
    print(
        f"| `kernelkeeper --help` (wall) | {stats(helps)} | — | — | ≤ 60 ms "
        f"| {'yes' if help_median <= 60 else '**NO**'} |"
    )
    print(f"| floor: `python -c pass` (wall) | {stats(floor)} | — | — | — | — |")
    print()
    print(f"runtime dir left over: {left or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

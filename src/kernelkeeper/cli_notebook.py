"""``kernelkeeper run NOTEBOOK.ipynb``: a notebook, cell by cell, outputs written back.

Behaves like ``jupyter execute`` (nbclient) and papermill's command line:
outputs replace the old ones and the notebook is written back in valid
nbformat (in place or to ``--output``), also when a cell fails, the kernel
dies or the run is stopped; ``--allow-errors`` and ``--timeout`` (per cell)
mean what they mean in nbclient; ``-p NAME VALUE`` parameters become a cell
tagged ``injected-parameters`` after the one tagged ``parameters``, as
papermill does, and are recorded in the notebook's metadata.

nbformat is imported here only, when a notebook is run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

from .cli_output import Progress, strip_ansi, use_color
from .cli_run import (
    EXIT_ERROR,
    EXIT_OK,
    KernelOptions,
    UsageError,
    read_text,
    stdin_hook,
    with_kernel,
)
from .client import AsyncKernelClient
from .errors import KernelTimeoutError
from .manager import AsyncKernelManager
from .session import Message

__all__ = ["cmd_notebook", "inject_parameters", "load_notebook", "parse_value"]

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
RAISES_TAG = "raises-exception"


def _nbformat() -> Any:
    """nbformat, imported on first use.

    jsonschema checks IRI formats with rfc3987_syntax when it is installed,
    which builds a grammar for seconds at import; the notebook schema has no
    IRI fields, so it is kept out (as if not installed) unless loaded already.
    """
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import nbformat

    return nbformat


def load_notebook(path: str) -> Any:
    """Read and validate a notebook; a broken one is a :class:`UsageError` saying where."""
    nbformat = _nbformat()

    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(
            f"{path}:{e.lineno}:{e.colno}: not a notebook: invalid JSON ({e.msg})"
        ) from None
    try:
        if isinstance(data, dict) and data.get("nbformat") == 4:
            # Checked as written first: reading converts, and a wrong shape
            # would fail there with no word of where.
            nbformat.validate(nbformat.from_dict(data))
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        raise UsageError(f"{path}: not a valid notebook: {_where(e)}") from None
    except Exception as e:  # nbformat raises plain errors for unknown versions and shapes
        raise UsageError(f"{path}: not a valid notebook: {e}") from None
    return nb


def _where(e: Exception) -> str:
    path = list(getattr(e, "absolute_path", None) or getattr(e, "path", None) or [])
    message = str(getattr(e, "message", None) or e).splitlines()[0]
    if len(message) > 160:  # jsonschema quotes the whole offending cell
        message = message[:150] + " ..."
    if not path:
        return message
    where = "/".join(str(p) for p in path)
    if len(path) >= 2 and path[0] == "cells":
        where = f"cell {int(path[1]) + 1} ({where})"
    return f"{message} at {where}"


def parse_value(text: str) -> Any:
    """A ``-p`` value, typed as papermill types it: bool, None, int, float, else str."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def inject_parameters(nb: Any, params: dict[str, Any]) -> None:
    """Put ``params`` in a cell tagged ``injected-parameters`` after the cell tagged
    ``parameters`` (at the top without one), replacing an earlier injection."""
    nbformat = _nbformat()

    cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    at = 0
    for i, cell in enumerate(cells):
        if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            at = i + 1
            break
    lines = ["# Parameters", *(f"{name} = {value!r}" for name, value in params.items())]
    cell = nbformat.v4.new_code_cell(source="\n".join(lines) + "\n")
    cell.metadata["tags"] = [INJECTED_TAG]
    cells.insert(at, cell)
    nb.cells = cells
    nb.metadata.setdefault("kernelkeeper", {})["parameters"] = params


class _Outputs:
    """One cell's outputs built from iopub messages as nbclient builds them:
    streams merged, clear_output honoured, display updates by display_id."""

    def __init__(self, cell: Any, displays: dict[str, list[Any]]) -> None:
        self.cell = cell
        self.displays = displays
        self.clear_pending = False
        cell.outputs = []

    def __call__(self, msg: Message) -> None:
        nbformat = _nbformat()

        t, c = msg["msg_type"], msg["content"]
        if t == "execute_input":
            self.cell.execution_count = c.get("execution_count")
            return
        if t == "clear_output":
            if c.get("wait"):
                self.clear_pending = True
            else:
                self.cell.outputs = []
            return
        display_id = (c.get("transient") or {}).get("display_id")
        if t == "update_display_data":
            for out in self.displays.get(display_id or "", []):
                out.data = c.get("data", {})
                out.metadata = c.get("metadata", {})
            return
        if t not in ("stream", "display_data", "execute_result", "error"):
            return
        if self.clear_pending:
            self.cell.outputs = []
            self.clear_pending = False
        outs = self.cell.outputs
        if t == "stream" and outs and outs[-1].get("name") == c.get("name"):
            outs[-1].text += c.get("text", "")
            return
        out = nbformat.v4.output_from_msg(msg)
        outs.append(out)
        if display_id:
            self.displays.setdefault(display_id, []).append(out)


def _write(nb: Any, path: str, like: str) -> None:
    """Write ``nb`` to ``path`` atomically, with the mode of ``like`` when it exists."""
    nbformat = _nbformat()

    nbformat.validate(nb)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".kk-", suffix=".ipynb", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        try:
            mode = os.stat(like).st_mode & 0o777
        except OSError:
            mask = os.umask(0)
            os.umask(mask)
            mode = 0o666 & ~mask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _params(pairs: list[list[str]] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in pairs or []:
        if not name.isidentifier():
            raise UsageError(f"-p {name}: not a valid parameter name")
        params[name] = parse_value(value)
    return params


def cmd_notebook(args: argparse.Namespace) -> int:
    """Run a notebook (see the module docstring)."""
    path = args.file
    nb = load_notebook(path)
    params = _params(args.parameters)
    kernel = args.kernel or nb.metadata.get("kernelspec", {}).get("name", "")
    cwd = args.cwd or os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(cwd):
        raise UsageError(f"--cwd {cwd}: no such directory")
    if params:
        lang = nb.metadata.get("kernelspec", {}).get("language", "python")
        if lang != "python":
            raise UsageError(f"-p needs a Python kernel; this notebook's language is {lang}")
        inject_parameters(nb, params)
    output = args.output or path
    if args.output and os.path.isdir(args.output):
        output = os.path.join(args.output, os.path.basename(path))
    opts = KernelOptions(
        kernel=kernel,
        cwd=cwd,
        encryption=args.encryption,
        startup_timeout=args.startup_timeout,
        # Outputs go into the notebook, where colour belongs; only what we print is stripped.
        color=True,
    )
    color = use_color(sys.stderr)

    async def body(km: AsyncKernelManager, kc: AsyncKernelClient) -> int:
        return await _execute(nb, kc, args, color)

    try:
        return asyncio.run(with_kernel(opts, body))
    finally:
        nb.metadata.setdefault("kernelkeeper", {})["end_time"] = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()
        )
        _write(nb, output, path)


async def _execute(nb: Any, kc: AsyncKernelClient, args: argparse.Namespace, color: bool) -> int:
    info = kc.kernel_info_reply
    if info is not None and info["content"].get("language_info"):
        nb.metadata["language_info"] = info["content"]["language_info"]
    code_cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    progress = Progress(len(code_cells))
    displays: dict[str, list[Any]] = {}
    status = EXIT_OK
    try:
        for done, (index, cell) in enumerate(code_cells):
            progress.update(done, f"cell {index + 1}")
            collect = _Outputs(cell, displays)
            cell.execution_count = None
            if not cell.source.strip():
                continue
            try:
                result = await kc.run_cell(
                    cell.source,
                    on_output=collect,
                    stdin_hook=stdin_hook(kc),
                    timeout=args.timeout,
                    stop_on_error=not args.allow_errors,
                )
            except KernelTimeoutError:
                progress.close()
                print(
                    f"kernelkeeper: cell {index + 1} did not finish within {args.timeout} s "
                    "(--timeout); interrupting the kernel",
                    file=sys.stderr,
                )
                await kc.interrupt()
                return EXIT_ERROR
            if result.execution_count is not None:
                cell.execution_count = result.execution_count
            if result.status == "ok":
                continue
            err = result.reply["content"]
            interrupted = err.get("ename") == "KeyboardInterrupt"
            allowed = args.allow_errors or RAISES_TAG in cell.metadata.get("tags", [])
            if allowed and not interrupted:
                continue
            progress.close()
            tb = "\n".join(err.get("traceback") or [f"{err.get('ename')}: {err.get('evalue')}"])
            print(tb if color else strip_ansi(tb), file=sys.stderr)
            print(
                f"kernelkeeper: error in cell {index + 1} of {args.file} "
                f"({err.get('ename')}: {err.get('evalue')}); the outputs so far are written "
                "(--allow-errors runs on past errors)",
                file=sys.stderr,
            )
            status = EXIT_ERROR
            break
        else:
            progress.update(len(code_cells), "done")
    finally:
        progress.close()
    return status

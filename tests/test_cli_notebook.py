"""``kernelkeeper run NOTEBOOK.ipynb`` through the real console script: outputs
checked in the written file, parameters, errors, malformed notebooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat

from cli_helpers import ANSI, cli, cli_tty


def make_nb(path: Path, *sources: str, tags: dict[int, list[str]] | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_markdown_cell("# a title")]
    for i, src in enumerate(sources):
        cell = nbformat.v4.new_code_cell(src)
        if tags and i in tags:
            cell.metadata["tags"] = tags[i]
        nb.cells.append(cell)
    nbformat.write(nb, str(path))
    return path


def read(path: Path) -> Any:
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    return nb


def texts(cell: Any) -> str:
    out = []
    for o in cell.outputs:
        if o.output_type == "stream":
            out.append(o.text)
        elif "data" in o:
            out.append(o.data.get("text/plain", ""))
        elif o.output_type == "error":
            out.append(f"{o.ename}: {o.evalue}")
    return "".join(out)


def test_notebook_outputs_are_written_back_in_place(isolated_runtime: Path, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("from the notebook's folder")
    path = make_nb(
        tmp_path / "nb.ipynb",
        "print('hello')\nprint('again')",
        "open('data.txt').read()",
        "",
        "from IPython.display import display\n"
        "h = display('first', display_id=True)\n"
        "h.update('second')",
        "from IPython.display import clear_output\nprint('gone')\nclear_output()\nprint('kept')",
    )
    # Old outputs are replaced, not added to.
    nb = read(path)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="stale\n")]
    nbformat.write(nb, str(path))
    r = cli(isolated_runtime, "run", str(path), cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    nb = read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert texts(code[0]) == "hello\nagain\n"
    assert len(code[0].outputs) == 1  # one merged stream
    assert texts(code[1]) == '"from the notebook\'s folder"'
    assert code[2].outputs == [] and code[2].execution_count is None
    assert texts(code[3]) == "'second'"
    assert texts(code[4]) == "kept\n"
    assert [c.execution_count for c in code] == [1, 2, None, 3, 4]
    assert nb.metadata.language_info.name == "python"


def test_output_elsewhere_and_parameters(isolated_runtime: Path, tmp_path: Path) -> None:
    path = make_nb(
        tmp_path / "in.ipynb",
        "n = 1\nname = 'default'\nflag = False",
        "print(n * 2, name, flag, type(n).__name__)",
        tags={0: ["parameters"]},
    )
    before = path.read_text()
    out = tmp_path / "out.ipynb"
    args = ("-p", "n", "21", "-p", "name", "kk", "-p", "flag", "True", "-o", str(out))
    r = cli(isolated_runtime, "run", str(path), *args)
    assert r.returncode == 0, r.stderr
    assert path.read_text() == before
    nb = read(out)
    injected = nb.cells[2]
    assert injected.metadata.tags == ["injected-parameters"]
    assert "n = 21\n" in injected.source and "name = 'kk'\n" in injected.source
    assert texts(nb.cells[3]) == "42 kk True int\n"
    assert nb.metadata.kernelkeeper.parameters == {"n": 21, "name": "kk", "flag": True}
    # Run again on the output: the injection is replaced, not repeated.
    again = cli(isolated_runtime, "run", str(out), "-p", "n", "2.5")
    assert again.returncode == 0, again.stderr
    nb = read(out)
    assert sum("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    assert texts(nb.cells[3]).startswith("5.0 default")


def test_error_stops_writes_and_exits_1(isolated_runtime: Path, tmp_path: Path) -> None:
    path = make_nb(tmp_path / "nb.ipynb", "print('before')", "1 / 0", "print('after')")
    r = cli(isolated_runtime, "run", str(path))
    assert r.returncode == 1, r.stderr
    assert "ZeroDivisionError" in r.stderr and "cell 3" in r.stderr
    assert ANSI not in r.stderr
    code = [c for c in read(path).cells if c.cell_type == "code"]
    assert texts(code[0]) == "before\n"
    assert code[1].outputs[0].output_type == "error"
    assert code[2].outputs == [] and code[2].execution_count is None


def test_allow_errors_and_raises_exception_tag(isolated_runtime: Path, tmp_path: Path) -> None:
    path = make_nb(tmp_path / "nb.ipynb", "1 / 0", "print('after')")
    r = cli(isolated_runtime, "run", "--allow-errors", str(path))
    assert r.returncode == 0, r.stderr
    code = [c for c in read(path).cells if c.cell_type == "code"]
    assert code[0].outputs[0].ename == "ZeroDivisionError"
    assert texts(code[1]) == "after\n"
    tagged = make_nb(
        tmp_path / "t.ipynb", "1 / 0", "print('after')", tags={0: ["raises-exception"]}
    )
    r = cli(isolated_runtime, "run", str(tagged))
    assert r.returncode == 0, r.stderr
    assert texts([c for c in read(tagged).cells if c.cell_type == "code"][1]) == "after\n"


def test_cell_timeout(isolated_runtime: Path, tmp_path: Path) -> None:
    path = make_nb(tmp_path / "nb.ipynb", "print('quick')", "import time; time.sleep(600)", "1")
    r = cli(isolated_runtime, "run", "--timeout", "3", str(path))
    assert r.returncode == 1, r.stderr
    assert "cell 3 did not finish within 3.0 s" in r.stderr
    assert texts(next(c for c in read(path).cells if c.cell_type == "code")) == "quick\n"


def test_malformed_notebooks_say_where(isolated_runtime: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.ipynb"
    broken.write_text('{\n "cells": [\n  {"cell_type": "code",,}\n ]\n}\n')
    r = cli(isolated_runtime, "run", str(broken))
    assert r.returncode == 2
    assert f"{broken}:3:" in r.stderr and "invalid JSON" in r.stderr
    assert "Traceback" not in r.stderr

    path = make_nb(tmp_path / "nb.ipynb", "1", "2")
    text = path.read_text()
    bad = tmp_path / "bad.ipynb"
    bad.write_text(text.replace('"cell_type": "code"', '"cell_type": "kode"'))
    assert bad.read_text() != text
    r = cli(isolated_runtime, "run", str(bad))
    assert r.returncode == 2
    assert "not a valid notebook" in r.stderr and "cell 2 (cells/1)" in r.stderr, r.stderr

    missing = cli(isolated_runtime, "run", str(tmp_path / "nope.ipynb"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_kernel_death_in_a_notebook_exits_3_and_keeps_outputs(
    isolated_runtime: Path, tmp_path: Path
) -> None:
    path = make_nb(tmp_path / "nb.ipynb", "print('alive')", "import os; os._exit(7)", "1")
    r = cli(isolated_runtime, "run", str(path))
    assert r.returncode == 3, r.stderr
    assert "Kernel died" in r.stderr and "exit code 7" in r.stderr
    assert texts(next(c for c in read(path).cells if c.cell_type == "code")) == "alive\n"


def test_progress_bar_on_a_terminal_only(isolated_runtime: Path, tmp_path: Path) -> None:
    path = make_nb(tmp_path / "nb.ipynb", *[f"{i} + 1" for i in range(5)])
    code, out = cli_tty(isolated_runtime, "run", str(path))
    assert code == 0, out
    assert "] 0/5 cell 2" in out and "] 5/5 done" in out, out
    piped = cli(isolated_runtime, "run", str(path))
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr

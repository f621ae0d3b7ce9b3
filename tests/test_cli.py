"""The command line: ``specs`` and ``run`` with code and scripts, through the real
console script in a subprocess (stdout and stderr are pipes, never a tty)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from cli_helpers import ANSI, cli, cli_tty


def test_help_lists_every_command(isolated_runtime: Path) -> None:
    r = cli(isolated_runtime, "--help")
    assert r.returncode == 0, r.stderr
    for cmd in ("specs", "run", "start", "ls", "attach", "interrupt", "restart", "stop", "prune"):
        assert f"    {cmd}" in r.stdout, cmd


def test_help_imports_no_kernel_machinery(isolated_runtime: Path) -> None:
    # What `--help` loads beyond the package: argparse, and nothing of a command.
    code = (
        "import sys; from kernelkeeper import cli; "
        "import contextlib, io\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['--help'])\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m == 'kernelkeeper.cli' or m.startswith('kernelkeeper.cli_')))"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['kernelkeeper.cli']"


def test_specs_text_and_json_with_a_broken_spec(
    isolated_runtime: Path, kernel_dir: Callable[..., str], tmp_path: Path
) -> None:
    kernel_dir("slow_start", name="good-one")
    broken = tmp_path / "jupyter" / "kernels" / "broken-one"
    broken.mkdir()
    (broken / "kernel.json").write_text("{not json")
    env = {"JUPYTER_PATH": str(tmp_path / "jupyter")}
    text = cli(isolated_runtime, "specs", **env)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["NAME", "DISPLAY", "NAME", "LANGUAGE", "FROM"]
    assert any(line.startswith("spec/good-one ") and "test slow_start" in line for line in lines)
    assert any(line.startswith("pyimport/kernel ") for line in lines)
    bad = [line for line in lines if line.startswith("spec/broken-one")]
    assert bad and str(broken / "kernel.json") in bad[0], text.stdout
    # Reported once, in the listing, not again as a log warning.
    assert "broken-one" not in text.stderr

    doc = json.loads(cli(isolated_runtime, "specs", "--json", **env).stdout)
    by_name = {k["name"]: k for k in doc["kernels"]}
    assert by_name["spec/good-one"]["status"] == "ok"
    assert by_name["spec/good-one"]["language"] == "python"
    assert by_name["spec/good-one"]["source"] == str(tmp_path / "jupyter" / "kernels" / "good-one")
    assert by_name["spec/broken-one"]["status"] == "broken"
    assert by_name["spec/broken-one"]["reason"]
    # The old name stays.
    old = cli(isolated_runtime, "list", "--json", **env)
    assert json.loads(old.stdout) == doc


def test_run_code_prints_output_and_result(isolated_runtime: Path) -> None:
    r = cli(
        isolated_runtime,
        "run",
        "-c",
        "import sys; print('out'); print('err', file=sys.stderr); 6 * 7",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "out\n42\n"
    assert "err\n" in r.stderr
    # CurveZMQ by default: no plain-text warning from ipykernel.
    assert "without encryption" not in r.stderr


def test_run_default_kernel_is_this_interpreter(isolated_runtime: Path) -> None:
    r = cli(isolated_runtime, "run", "-c", "import sys; print(sys.executable)")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == Path(sys.executable).resolve()


def test_run_script_and_stdin(isolated_runtime: Path, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("total = sum(range(10))\nprint('total', total)\n")
    r = cli(isolated_runtime, "run", str(script))
    assert (r.returncode, r.stdout) == (0, "total 45\n"), r.stderr
    piped = cli(isolated_runtime, "run", input="print('from stdin')\n")
    assert (piped.returncode, piped.stdout) == (0, "from stdin\n"), piped.stderr


def test_error_in_the_code_exits_1_without_ansi_in_a_pipe(isolated_runtime: Path) -> None:
    r = cli(isolated_runtime, "run", "-c", "def f():\n    1 / 0\nf()")
    assert r.returncode == 1, r.stderr
    assert "ZeroDivisionError" in r.stderr
    assert ANSI not in r.stderr and ANSI not in r.stdout


def test_no_color_set_strips_ansi_the_code_prints(isolated_runtime: Path) -> None:
    code = "print('\\x1b[31mred\\x1b[0m')"
    r = cli(isolated_runtime, "run", "-c", code, NO_COLOR="1")
    assert (r.returncode, r.stdout) == (0, "red\n"), r.stderr


def test_usage_errors_exit_2_and_say_what_to_do(isolated_runtime: Path, tmp_path: Path) -> None:
    unknown = cli(isolated_runtime, "run", "-k", "no-such-kernel-kk", "-c", "1")
    assert unknown.returncode == 2
    assert "no-such-kernel-kk" in unknown.stderr and "pyimport/kernel" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    missing = cli(isolated_runtime, "run", str(tmp_path / "nope.py"))
    assert missing.returncode == 2
    assert f"no such file: {tmp_path / 'nope.py'}" in missing.stderr
    both = cli(isolated_runtime, "run", "-c", "1", str(tmp_path / "x.py"))
    assert both.returncode == 2 and "either" in both.stderr
    bad_opt = cli(isolated_runtime, "run", "--no-such-option")
    assert bad_opt.returncode == 2 and "usage:" in bad_opt.stderr
    nb_only = cli(isolated_runtime, "run", "-c", "1", "-p", "a", "1")
    assert nb_only.returncode == 2 and "notebooks" in nb_only.stderr


def test_run_cwd(isolated_runtime: Path, tmp_path: Path) -> None:
    r = cli(isolated_runtime, "run", "--cwd", str(tmp_path), "-c", "import os; print(os.getcwd())")
    assert (r.returncode, r.stdout.strip()) == (0, str(tmp_path)), r.stderr
    bad = cli(isolated_runtime, "run", "--cwd", str(tmp_path / "nope"), "-c", "1")
    assert bad.returncode == 2 and "no such directory" in bad.stderr


def test_execution_timeout(isolated_runtime: Path) -> None:
    r = cli(isolated_runtime, "run", "--timeout", "2", "-c", "import time; time.sleep(600)")
    assert r.returncode == 1, r.stderr
    assert "did not finish within 2.0 s" in r.stderr


def test_gateway_forwards_or_says_it_is_missing(isolated_runtime: Path) -> None:
    r = cli(isolated_runtime, "gateway", "--help")
    try:
        import kernelkeeper.gateway  # noqa: F401
    except ImportError:
        assert r.returncode == 2
        assert "gateway is not available" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert "usage:" in r.stdout.lower()


def test_colour_on_a_terminal_unless_no_color(isolated_runtime: Path) -> None:
    code, out = cli_tty(isolated_runtime, "run", "-c", "1 / 0")
    assert code == 1, out
    assert "ZeroDivisionError" in out and ANSI in out
    code, out = cli_tty(isolated_runtime, "run", "-c", "1 / 0", NO_COLOR="1")
    assert code == 1, out
    assert "ZeroDivisionError" in out and ANSI not in out


def test_input_is_answered_from_stdin(isolated_runtime: Path) -> None:
    code = "name = input('name? '); print('got', name)"
    r = cli(isolated_runtime, "run", "-c", code, input="kk\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("got kk\n")
    # Used up: input() gets an empty line rather than waiting for ever.
    r = cli(isolated_runtime, "run", "-c", code, input="")
    assert (r.returncode, r.stdout.endswith("got \n")) == (0, True), (r.stdout, r.stderr)

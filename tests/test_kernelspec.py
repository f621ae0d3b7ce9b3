"""Tests for kernelkeeper.kernelspec: parsing, lookup order, templating."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernelkeeper import kernelspec
from kernelkeeper.errors import KernelError, KernelSpecError, NoSuchKernel
from kernelkeeper.kernelspec import (
    KernelSpec,
    find_kernel_specs,
    get_kernel_spec,
    kernel_dirs,
    list_kernel_specs,
    write_kernel_spec,
)
from privdrop import open_dir, run_as_unprivileged

MINOR = sys.version_info.minor

VALID: dict[str, Any] = {
    "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "My Python",
    "language": "python",
    "env": {"FOO": "bar", "PATHISH": "${HOME}/x"},
    "interrupt_mode": "message",
    "metadata": {"debugger": True, "nested": {"a": [1, 2]}},
}


@pytest.fixture
def jpath(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Two JUPYTER_PATH entries (high, low priority) and an empty user data dir."""
    high = tmp_path / "high"
    low = tmp_path / "low"
    data = tmp_path / "userdata"
    for d in (high, low, data):
        d.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(high), str(low)]))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    return high, low


def install(root: Path, name: str, content: Any) -> Path:
    """Put a kernel.json under <root>/kernels/<name>; dicts are JSON-encoded, str written raw."""
    d = root / "kernels" / name
    d.mkdir(parents=True)
    text = content if isinstance(content, str) else json.dumps(content)
    (d / "kernel.json").write_text(text, encoding="utf-8")
    return d


# --- the dataclass ---------------------------------------------------------------------


def test_from_dict_parses_every_field() -> None:
    spec = KernelSpec.from_dict(VALID, name="mine", resource_dir="/res")
    assert spec.argv == ("python3", "-m", "ipykernel_launcher", "-f", "{connection_file}")
    assert spec.display_name == "My Python"
    assert spec.language == "python"
    assert dict(spec.env) == {"FOO": "bar", "PATHISH": "${HOME}/x"}
    assert spec.interrupt_mode == "message"
    assert spec.metadata["debugger"] is True
    assert spec.resource_dir == "/res"
    assert spec.name == "mine"


def test_defaults() -> None:
    spec = KernelSpec.from_dict({"argv": ["k"]}, name="fallback")
    assert spec.display_name == "fallback"
    assert spec.language == ""
    assert dict(spec.env) == {}
    assert spec.interrupt_mode == "signal"
    assert dict(spec.metadata) == {}
    direct = KernelSpec(argv=("k",), display_name="K")
    assert dict(direct.env) == {} and dict(direct.metadata) == {}
    assert direct.interrupt_mode == "signal"


def test_spec_is_frozen_and_does_not_alias_input() -> None:
    env = {"A": "1"}
    meta: dict[str, Any] = {"nested": {"x": 1}}
    argv = ["k", "-f", "{connection_file}"]
    spec = KernelSpec(argv=tuple(argv), display_name="K", env=env, metadata=meta)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.display_name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.env["A"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.metadata["new"] = 1  # type: ignore[index]
    env["A"] = "changed"
    meta["nested"]["x"] = 2
    assert spec.env["A"] == "1"
    assert spec.metadata["nested"] == {"x": 1}


def test_to_dict_round_trip_and_fresh_containers() -> None:
    spec = KernelSpec.from_dict(VALID, name="mine")
    d = spec.to_dict()
    assert d == VALID
    d["argv"].append("more")
    d["env"]["NEW"] = "x"
    d["metadata"]["nested"]["a"].append(3)
    assert spec.to_dict() == VALID
    assert KernelSpec.from_dict(spec.to_dict(), name="mine") == spec


def test_pickle_and_copy() -> None:
    spec = KernelSpec.from_dict(VALID, name="mine", resource_dir="/res")
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert copy.deepcopy(spec) == spec
    assert dataclasses.replace(spec, name="other").name == "other"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"display_name": "x"}, "argv"),
        ({"argv": "python -m x"}, "argv"),
        ({"argv": []}, "argv"),
        ({"argv": ["python", 3]}, "argv[1]"),
        ({"argv": ["k"], "display_name": 5}, "display_name"),
        ({"argv": ["k"], "language": ["py"]}, "language"),
        ({"argv": ["k"], "env": ["A=1"]}, "env"),
        ({"argv": ["k"], "env": {"A": 1}}, "env"),
        ({"argv": ["k"], "metadata": "x"}, "metadata"),
        ({"argv": ["k"], "interrupt_mode": "kill"}, "interrupt_mode"),
        ({"argv": ["k"], "interrupt_mode": 1}, "interrupt_mode"),
        (["k"], "object"),
    ],
)
def test_from_dict_rejects_bad_types(data: Any, fragment: str) -> None:
    with pytest.raises(KernelSpecError) as info:
        KernelSpec.from_dict(data, path="/some/kernel.json")
    assert fragment in str(info.value)
    assert info.value.path == "/some/kernel.json"
    assert "/some/kernel.json" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, KernelError)


def test_direct_construction_checks_interrupt_mode() -> None:
    with pytest.raises(KernelSpecError, match="interrupt_mode"):
        KernelSpec(argv=("k",), display_name="K", interrupt_mode="sigint")


def test_from_resource_dir(tmp_path: Path) -> None:
    d = install(tmp_path, "MyKernel", VALID)
    spec = KernelSpec.from_resource_dir(d)
    assert spec.name == "mykernel"  # lower-cased, like Jupyter
    assert spec.resource_dir == str(d)
    assert spec.display_name == "My Python"
    assert KernelSpec.from_resource_dir(str(d), name="explicit").name == "explicit"


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"display_name": "no argv"}),
        json.dumps({"argv": "python"}),
        json.dumps({"argv": ["k"], "interrupt_mode": "kill"}),
    ],
)
def test_from_resource_dir_broken(tmp_path: Path, content: str) -> None:
    d = install(tmp_path, "broken", content)
    with pytest.raises(KernelSpecError) as info:
        KernelSpec.from_resource_dir(d)
    json_path = str(d / "kernel.json")
    assert info.value.path == json_path
    assert json_path in str(info.value)


def test_from_resource_dir_unreadable(tmp_path: Path) -> None:
    with pytest.raises(KernelSpecError) as info:
        KernelSpec.from_resource_dir(tmp_path / "missing")
    assert info.value.path == str(tmp_path / "missing" / "kernel.json")

    d = tmp_path / "binary"
    d.mkdir()
    (d / "kernel.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(KernelSpecError, match=r"kernel\.json"):
        KernelSpec.from_resource_dir(d)


def test_write_kernel_spec_round_trip(tmp_path: Path) -> None:
    spec = KernelSpec.from_dict(VALID, name="out")
    path = write_kernel_spec(spec, tmp_path / "a" / "out")
    assert path == str(tmp_path / "a" / "out" / "kernel.json")
    assert json.loads(Path(path).read_text(encoding="utf-8")) == VALID
    assert os.listdir(tmp_path / "a" / "out") == ["kernel.json"]  # no temp file left
    again = KernelSpec.from_resource_dir(tmp_path / "a" / "out")
    assert again.to_dict() == spec.to_dict()
    # Overwriting an existing spec works too.
    write_kernel_spec(dataclasses.replace(spec, display_name="Renamed"), tmp_path / "a" / "out")
    assert KernelSpec.from_resource_dir(tmp_path / "a" / "out").display_name == "Renamed"


# --- format_argv / format_env ------------------------------------------------------------


def test_format_argv_templating() -> None:
    spec = KernelSpec(
        argv=(
            "/opt/kernel",
            "--cf={connection_file}",
            "{resource_dir}/logo.png",
            "{profile}",
            "{unknown}",
            "{}",
            "{connection_file}{connection_file}",
        ),
        display_name="K",
        resource_dir="/res",
    )
    argv = spec.format_argv("/run/k.json", profile="dev")
    assert argv == [
        "/opt/kernel",
        "--cf=/run/k.json",
        "/res/logo.png",
        "dev",
        "{unknown}",
        "{}",
        "/run/k.json/run/k.json",
    ]
    assert spec.argv[1] == "--cf={connection_file}"  # the spec itself is untouched


def test_format_argv_does_not_expand_twice() -> None:
    spec = KernelSpec(argv=("k", "{connection_file}"), display_name="K", resource_dir="/res")
    assert spec.format_argv("/tmp/{resource_dir}.json") == ["k", "/tmp/{resource_dir}.json"]


@pytest.mark.parametrize("exe", ["python", "python3", f"python3.{MINOR}"])
def test_format_argv_rewrites_own_python(exe: str) -> None:
    spec = KernelSpec(
        argv=(exe, "-m", "ipykernel_launcher", "-f", "{connection_file}"), display_name="P"
    )
    assert spec.format_argv("/c.json") == [
        sys.executable,
        "-m",
        "ipykernel_launcher",
        "-f",
        "/c.json",
    ]


@pytest.mark.parametrize(
    "exe",
    [f"python3.{MINOR + 1}", f"python3.{MINOR - 1}", "/usr/bin/python3", "python2", "pythonw"],
)
def test_format_argv_leaves_other_pythons(exe: str) -> None:
    spec = KernelSpec(argv=(exe, "-f", "{connection_file}"), display_name="P")
    assert spec.format_argv("/c.json") == [exe, "-f", "/c.json"]


def test_format_argv_only_rewrites_first_element() -> None:
    spec = KernelSpec(argv=("env", "python3", "-f", "{connection_file}"), display_name="P")
    assert spec.format_argv("/c.json") == ["env", "python3", "-f", "/c.json"]


@given(
    st.lists(st.text(), min_size=1, max_size=5), st.text(), st.dictionaries(st.text(), st.text())
)
def test_format_argv_never_raises(args: list[str], cf: str, extra: dict[str, str]) -> None:
    extra.pop("connection_file", None)
    spec = KernelSpec(argv=tuple(args), display_name="K")
    out = spec.format_argv(cf, **extra)
    assert len(out) == len(args)
    for before, after in zip(args[1:], out[1:], strict=True):
        if "{" not in before:
            assert after == before


def test_format_env() -> None:
    spec = KernelSpec(
        argv=("k",),
        display_name="K",
        env={"A": "${HOME}/bin", "B": "${NOPE}", "C": "plain", "D": "$HOME-${HOME}"},
    )
    assert spec.format_env({"HOME": "/home/me"}) == {
        "A": "/home/me/bin",
        "B": "${NOPE}",
        "C": "plain",
        "D": "/home/me-/home/me",
    }


def test_format_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KK_TEST_VAR", "value")
    monkeypatch.delenv("KK_TEST_UNSET", raising=False)
    spec = KernelSpec(
        argv=("k",), display_name="K", env={"X": "${KK_TEST_VAR}", "Y": "${KK_TEST_UNSET}"}
    )
    assert spec.format_env() == {"X": "value", "Y": "${KK_TEST_UNSET}"}


# --- discovery -----------------------------------------------------------------------------


def test_kernel_dirs_follows_jupyter_path(jpath: tuple[Path, Path]) -> None:
    high, low = jpath
    dirs = kernel_dirs()
    assert dirs[:2] == [str(high / "kernels"), str(low / "kernels")]


def test_first_directory_wins(jpath: tuple[Path, Path]) -> None:
    high, low = jpath
    install(high, "kk-dup", {"argv": ["python3", "high"], "display_name": "High"})
    install(low, "kk-dup", {"argv": ["python3", "low"], "display_name": "Low"})
    install(low, "kk-only-low", {"argv": ["python3", "low"], "display_name": "Only low"})

    found = find_kernel_specs()
    assert found["kk-dup"] == str(high / "kernels" / "kk-dup")
    assert found["kk-only-low"] == str(low / "kernels" / "kk-only-low")
    assert get_kernel_spec("kk-dup").display_name == "High"
    specs, broken = list_kernel_specs()
    assert specs["kk-dup"].argv == ("python3", "high")
    assert broken == {}


def test_higher_priority_broken_spec_still_shadows(jpath: tuple[Path, Path]) -> None:
    high, low = jpath
    install(high, "kk-shadow", "{broken")
    install(low, "kk-shadow", {"argv": ["python3", "low"], "display_name": "Low"})
    with pytest.raises(KernelSpecError):
        get_kernel_spec("kk-shadow")


def test_names_are_case_insensitive_and_validated(jpath: tuple[Path, Path]) -> None:
    high, _low = jpath
    install(high, "KK-Mixed.Case_1", {"argv": ["python3"], "display_name": "Mixed"})
    install(high, "kk bad name", {"argv": ["python3"], "display_name": "Bad"})
    install(high, "kk-\u212aelvin", {"argv": ["python3"], "display_name": "Kelvin"})
    (high / "kernels" / "kk-no-json").mkdir()

    found = find_kernel_specs()
    assert "kk-mixed.case_1" in found
    assert not any(" " in name or "elvin" in name for name in found)
    assert "kk-no-json" not in found
    spec = get_kernel_spec("KK-MIXED.case_1")
    assert spec.name == "kk-mixed.case_1"
    assert spec.display_name == "Mixed"


def test_no_such_kernel(jpath: tuple[Path, Path]) -> None:
    high, _low = jpath
    install(high, "kk-present", {"argv": ["python3"], "display_name": "Present"})
    with pytest.raises(LookupError) as info:
        get_kernel_spec("kk-absent")
    err = info.value
    assert isinstance(err, NoSuchKernel)
    assert err.name == "kk-absent"
    assert "kk-present" in err.available
    assert "kk-absent" in str(err)
    assert "kk-present" in str(err)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"display_name": "no argv"}),
        json.dumps({"argv": "python -m x"}),
        json.dumps({"argv": ["python3"], "interrupt_mode": "kill"}),
    ],
)
def test_broken_specs_are_reported_and_skipped(
    jpath: tuple[Path, Path], content: str, caplog: pytest.LogCaptureFixture
) -> None:
    high, low = jpath
    bad = install(high, "kk-broken", content)
    install(low, "kk-good", {"argv": ["python3"], "display_name": "Good"})
    bad_json = str(bad / "kernel.json")

    with caplog.at_level(logging.WARNING, logger="kernelkeeper.kernelspec"):
        specs, broken = list_kernel_specs()
        list_kernel_specs()  # a second listing must not repeat the warning

    assert "kk-good" in specs
    assert "kk-broken" not in specs
    assert list(broken) == [bad_json]
    assert isinstance(broken[bad_json], KernelSpecError)
    assert broken[bad_json].path == bad_json
    warnings = [r for r in caplog.records if bad_json in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING

    # Asked for by name, the broken spec is an error, not a missing kernel.
    with pytest.raises(KernelSpecError) as info:
        get_kernel_spec("kk-broken")
    assert not isinstance(info.value, NoSuchKernel)
    assert bad_json in str(info.value)
    assert get_kernel_spec("kk-good").display_name == "Good"


def test_kernel_dirs_is_computed_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "one"))
    assert kernel_dirs()[0] == str(tmp_path / "one" / "kernels")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "two"))
    assert kernel_dirs()[0] == str(tmp_path / "two" / "kernels")


def test_listing_uses_patched_kernel_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, "only", {"argv": ["python3"], "display_name": "Only"})
    monkeypatch.setattr(kernelspec, "kernel_dirs", lambda: [str(tmp_path / "kernels")])
    assert find_kernel_specs() == {"only": str(tmp_path / "kernels" / "only")}


# --- kernel.json files that cannot be read -------------------------------------------------


def _assert_broken(name: str, json_path: str, fragment: str) -> None:
    """``name`` is listed among the broken with ``fragment`` and raises KernelSpecError."""
    specs, broken = list_kernel_specs()
    assert name not in specs
    assert json_path in broken, broken
    assert fragment in str(broken[json_path])
    with pytest.raises(KernelSpecError) as info:
        get_kernel_spec(name)
    assert not isinstance(info.value, NoSuchKernel)
    assert info.value.path == json_path
    assert json_path in str(info.value)
    assert fragment in str(info.value)


def test_kernel_json_fifo_is_reported_without_blocking(jpath: tuple[Path, Path]) -> None:
    high, _low = jpath
    d = high / "kernels" / "kk-fifo"
    d.mkdir(parents=True)
    os.mkfifo(d / "kernel.json")
    # Opening a FIFO for reading blocks until a writer comes: none ever will, so
    # this test hangs (and pytest-timeout fails it) if anything opens it plainly.
    _assert_broken("kk-fifo", str(d / "kernel.json"), "FIFO")
    with pytest.raises(KernelSpecError, match="FIFO"):
        KernelSpec.from_resource_dir(d)


def test_kernel_json_symlink_loop(jpath: tuple[Path, Path]) -> None:
    high, _low = jpath
    d = high / "kernels" / "kk-loop"
    d.mkdir(parents=True)
    os.symlink("other.json", d / "kernel.json")
    os.symlink("kernel.json", d / "other.json")
    _assert_broken("kk-loop", str(d / "kernel.json"), "symlink loop")


def test_kernel_json_dangling_symlink(jpath: tuple[Path, Path]) -> None:
    high, _low = jpath
    d = high / "kernels" / "kk-dangling"
    d.mkdir(parents=True)
    os.symlink("nowhere.json", d / "kernel.json")
    _assert_broken("kk-dangling", str(d / "kernel.json"), "dangling symlink")


def test_kernel_json_that_is_a_directory(jpath: tuple[Path, Path]) -> None:
    high, _low = jpath
    d = high / "kernels" / "kk-dir"
    (d / "kernel.json").mkdir(parents=True)
    _assert_broken("kk-dir", str(d / "kernel.json"), "a directory")


def test_stray_files_and_missing_dirs_stay_silent(
    jpath: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    high, _low = jpath
    (high / "kernels").mkdir()
    (high / "kernels" / "README.md").write_text("not a kernel")  # a file, not a kernel dir
    (high / "kernels" / "empty").mkdir()  # a directory without kernel.json
    with caplog.at_level(logging.DEBUG, logger="kernelkeeper.kernelspec"):
        found = find_kernel_specs()
        _specs, broken = list_kernel_specs()  # the low dir has no kernels/ at all
    assert "readme.md" not in found and "empty" not in found
    assert not any(str(high) in p for p in broken)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- argv[0] that cannot be run ---------------------------------------------------------------


def _exe(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("argv0", "env", "fragment"),
    [
        ("/nonexistent/kk-kernel", {}, "'/nonexistent/kk-kernel' (argv[0]) does not exist"),
        ("{resource_dir}/missing-exe", {}, "missing-exe"),
        ("kk-no-such-command-anywhere", {}, "not found on PATH"),
        # on the process's PATH, but the spec's own env PATH does not have it
        ("sh", {"PATH": "/nonexistent-bin"}, "PATH its 'env' sets"),
        ("NOT_EXEC", {}, "not executable"),
        ("A_DIR", {}, "a directory"),
        # a lone surrogate (JSON "\ud800") names no file: not a UnicodeEncodeError
        ("/opt/\ud800", {}, "not a valid file name"),
    ],
)
def test_unusable_executable_is_broken(
    jpath: tuple[Path, Path], tmp_path: Path, argv0: str, env: dict[str, str], fragment: str
) -> None:
    high, _low = jpath
    if argv0 == "NOT_EXEC":
        argv0 = str(_exe(tmp_path / "bin" / "kk-not-exec", 0o644))
    elif argv0 == "A_DIR":
        argv0 = str(tmp_path)
    d = install(
        high, "kk-exe", {"argv": [argv0, "{connection_file}"], "display_name": "E", "env": env}
    )
    _assert_broken("kk-exe", str(d / "kernel.json"), fragment)
    # Parsing stays pure: the file itself is a well-formed spec.
    assert KernelSpec.from_resource_dir(d).argv[0] == argv0


def test_usable_executables(jpath: tuple[Path, Path], tmp_path: Path) -> None:
    high, _low = jpath
    bindir = tmp_path / "mybin"
    _exe(bindir / "kk-private-kernel")
    install(high, "kk-abs", {"argv": [sys.executable, "-m", "x"], "display_name": "Abs"})
    install(high, "kk-python", {"argv": ["python", "-m", "x"], "display_name": "Python"})
    install(high, "kk-onpath", {"argv": ["sh", "-c", "x"], "display_name": "Sh"})
    install(
        high,
        "kk-envpath",
        {
            "argv": ["kk-private-kernel"],
            "display_name": "Env",
            "env": {"PATH": f"{bindir}:${{PATH}}"},
        },
    )
    rd = high / "kernels" / "kk-resource"
    _exe(rd / "run.sh")
    (rd / "kernel.json").write_text(
        json.dumps({"argv": ["{resource_dir}/run.sh"], "display_name": "R"})
    )
    specs, broken = list_kernel_specs()
    assert {"kk-abs", "kk-python", "kk-onpath", "kk-envpath", "kk-resource"} <= set(specs)
    assert not [p for p in broken if str(high) in p], broken
    assert get_kernel_spec("kk-envpath").argv == ("kk-private-kernel",)


# --- permissions (root ignores chmod: checked as an unprivileged user) --------------------

__all__ = ["open_dir"]  # a fixture, used by name


def test_unreadable_specs_and_unlistable_dirs(open_dir: Path) -> None:
    kernels = open_dir / "kernels"
    # /bin/sh: our interpreter may live under /root, out of nobody's reach.
    good = install(open_dir, "kk-good", {"argv": ["/bin/sh"], "display_name": "Good"})
    unreadable = install(open_dir, "kk-unreadable", {"argv": ["python3"], "display_name": "U"})
    locked = install(open_dir, "kk-locked", {"argv": ["python3"], "display_name": "L"})
    hidden = open_dir / "hidden" / "kernels"
    install(open_dir / "hidden", "kk-hidden", {"argv": ["python3"], "display_name": "H"})
    missing = open_dir / "missing" / "kernels"
    (unreadable / "kernel.json").chmod(0o000)
    locked.chmod(0o000)  # kernel.json cannot even be looked up inside
    hidden.chmod(0o000)  # the whole search directory cannot be listed
    kernels.chmod(0o755)
    dirs = [str(kernels), str(hidden), str(missing)]
    out = run_as_unprivileged(
        f"ks.kernel_dirs = lambda: {dirs!r}\n"
        "good, broken = ks.list_kernel_specs()\n"
        "ks.list_kernel_specs()\n"  # the second listing must not log again
        "out['good'] = sorted(good)\n"
        "out['broken'] = {p: [type(e).__name__, e.path, str(e)] for p, e in broken.items()}\n"
        "out['by_name'] = {}\n"
        "for name in ('kk-unreadable', 'kk-locked'):\n"
        "    try:\n"
        "        ks.get_kernel_spec(name)\n"
        "    except ks.KernelSpecError as e:\n"
        "        out['by_name'][name] = [e.path, str(e)]\n"
        "out['found'] = sorted(ks.find_kernel_specs())\n",
        {},
    )
    assert out["good"] == ["kk-good"]
    assert good.name == "kk-good"
    u_json, l_json = str(unreadable / "kernel.json"), str(locked / "kernel.json")
    assert set(out["broken"]) == {u_json, l_json, str(hidden)}
    for path, (kind, err_path, text) in out["broken"].items():
        assert kind == "KernelSpecError" and err_path == path and path in text
    assert "permission denied" in out["broken"][u_json][2]
    assert "cannot be searched" in out["broken"][l_json][2]
    assert "cannot list kernels directory" in out["broken"][str(hidden)][2]
    assert str(missing) not in out["broken"]  # missing is the normal case
    # Asked for by name: the path and the reason, not "no such kernel".
    assert out["by_name"]["kk-unreadable"][0] == u_json
    assert "permission denied" in out["by_name"]["kk-unreadable"][1]
    assert out["by_name"]["kk-locked"][0] == l_json
    assert {"kk-good", "kk-unreadable", "kk-locked"} <= set(out["found"])
    # Each problem is logged once, with its path.
    for path in (u_json, l_json, str(hidden)):
        assert len([w for w in out["warnings"] if path in w]) == 1, out["warnings"]
    assert not [w for w in out["warnings"] if str(missing) in w]

"""What importing kernelkeeper loads: heavy modules the idle path does not need stay out.

Each check runs a fresh interpreter and looks at ``sys.modules`` by name (no
timing, no RSS). The modules were measured beside asyncio and pyzmq:
importlib.metadata (with email, zipfile, csv) 1.5-3 MiB, jupyter_core.paths
(with platformdirs) 0.5-1.8 MiB, psutil 1 MiB, decimal 0.4 MiB, ctypes 0.3 MiB.
Also here: :mod:`kernelkeeper.entrypoints`, which reads the finder's entry points
without importlib.metadata, agrees with importlib.metadata.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from kernelkeeper import entrypoints

GROUP = "kernelkeeper.kernel_providers"

#: Never needed to import the package and build a multi-kernel manager.
LAZY = (
    "importlib.metadata",
    "email",
    "zipfile",
    "csv",
    "jupyter_core",
    "platformdirs",
    "psutil",
    "ctypes",
    "decimal",
    "traitlets",
    "jupyter_client",
)
#: The gateway's aiohttp brings email along; the rest stay out of it too.
LAZY_GATEWAY = tuple(m for m in LAZY if m != "email")


def _loaded_after(code: str) -> set[str]:
    """The top-level names in ``sys.modules`` of a fresh interpreter after ``code``."""
    prog = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", prog], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    names = set(json.loads(out.stdout.strip().splitlines()[-1]))
    return names | {n.split(".")[0] for n in names}


def _present(loaded: set[str], wanted: tuple[str, ...]) -> list[str]:
    return [m for m in wanted if m in loaded]


def test_manager_import_leaves_heavy_modules_out() -> None:
    loaded = _loaded_after(
        "import kernelkeeper\n"
        "kernelkeeper.AsyncMultiKernelManager(kernel_manager_kw={'autorestart': True})"
    )
    assert _present(loaded, LAZY) == []


def test_every_public_name_still_resolves_and_stays_light() -> None:
    loaded = _loaded_after(
        "import kernelkeeper\n"
        "missing = [n for n in kernelkeeper.__all__ if getattr(kernelkeeper, n, None) is None]\n"
        "assert not missing, missing"
    )
    # The blocking face and everything else: still nothing of the heavy list but
    # what they need themselves.
    assert _present(loaded, ("importlib.metadata", "psutil", "decimal", "traitlets")) == []


def test_gateway_import_leaves_heavy_modules_out() -> None:
    # What ``python -m kernelkeeper.gateway`` imports before it serves.
    loaded = _loaded_after("import kernelkeeper.gateway")
    assert _present(loaded, LAZY_GATEWAY) == []


def test_finding_providers_needs_no_importlib_metadata() -> None:
    # Every start resolves a kernel type through the default finder: with only
    # kernelkeeper registering providers, its entry points are read directly.
    loaded = _loaded_after(
        "from kernelkeeper.finder import default_finder\n"
        "ids = [p.id for p in default_finder().providers]\n"
        "assert ids[:2] == ['spec', 'pyimport'], ids"
    )
    assert _present(loaded, ("importlib.metadata", "email", "zipfile")) == []


# --- kernelkeeper.entrypoints agrees with importlib.metadata ---------------------------------


def _pairs(eps: Iterable[entrypoints.EntryPointLike]) -> list[tuple[str, str]]:
    return [(ep.name, ep.value) for ep in eps]


def _metadata_pairs(group: str) -> list[tuple[str, str]]:
    return _pairs(importlib.metadata.entry_points(group=group))


def test_scan_of_this_environment_matches_importlib_metadata() -> None:
    scanned = entrypoints._scan(GROUP)
    assert scanned is not None, "the fast path should apply with only kernelkeeper's providers"
    assert _pairs(scanned) == _metadata_pairs(GROUP)
    assert _pairs(entrypoints.entry_points(group=GROUP)) == _metadata_pairs(GROUP)
    for group in ("console_scripts", "pytest11", "nbconvert.exporters", "no.such.group"):
        assert _pairs(entrypoints.entry_points(group=group)) == _metadata_pairs(group)


def test_loaded_entry_point_is_the_named_object() -> None:
    ep = entrypoints.EntryPoint("spec", "kernelkeeper.finder:KernelSpecProvider", GROUP)
    from kernelkeeper.finder import KernelSpecProvider

    assert ep.load() is KernelSpecProvider
    assert entrypoints.EntryPoint("m", "kernelkeeper.finder", GROUP).load().__name__ == (
        "kernelkeeper.finder"
    )


def _dist(root: Path, folder: str, text: str | None) -> None:
    d = root / folder
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {folder.split('-')[0]}\n")
    if text is not None:
        (d / "entry_points.txt").write_text(text)


def _section(*lines: str) -> str:
    return f"[{GROUP}]\n" + "".join(f"{line}\n" for line in lines)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory that is the whole of ``sys.path``."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.setattr(sys, "path", [str(root)])
    return root


def test_one_registering_distribution_is_read_directly(site: Path) -> None:
    _dist(
        site, "plugin-1.0.dist-info", "# c\n[other]\nx = a:b\n" + _section("one = a.b:C", "two=a")
    )
    _dist(site, "unrelated-2.0.dist-info", "[console_scripts]\nfoo = foo:main\n")
    _dist(site, "bare-1.0.dist-info", None)
    scanned = entrypoints._scan(GROUP)
    assert scanned is not None
    assert _pairs(scanned) == [("one", "a.b:C"), ("two", "a")] == _metadata_pairs(GROUP)
    assert entrypoints._scan("no.such.group") == []


def test_two_registering_distributions_are_left_to_importlib_metadata(site: Path) -> None:
    _dist(site, "first-1.0.dist-info", _section("a = x:A"))
    _dist(site, "second-1.0.dist-info", _section("b = y:B"))
    assert entrypoints._scan(GROUP) is None
    assert sorted(_pairs(entrypoints.entry_points(group=GROUP))) == [("a", "x:A"), ("b", "y:B")]


def test_a_name_seen_twice_is_left_to_importlib_metadata(tmp_path: Path, site: Path) -> None:
    # The first distribution of a name shadows the later ones, which one is
    # first is importlib.metadata's business.
    later = tmp_path / "later"
    _dist(site, "kk-1.0.dist-info", "[console_scripts]\nkk = kk:main\n")
    _dist(later, "kk-2.0.dist-info", _section("shadowed = z:Z"))
    sys.path.append(str(later))
    assert entrypoints._scan(GROUP) is None
    assert _pairs(entrypoints.entry_points(group=GROUP)) == _metadata_pairs(GROUP) == []


@pytest.mark.parametrize(
    "text",
    [_section("no equals sign"), _section("bad = not a valid value!")],
    ids=["malformed-line", "malformed-value"],
)
def test_malformed_files_are_left_to_importlib_metadata(site: Path, text: str) -> None:
    _dist(site, "plugin-1.0.dist-info", text)
    assert entrypoints._scan(GROUP) is None


def test_zip_and_egg_entries_are_left_to_importlib_metadata(tmp_path: Path, site: Path) -> None:
    archive = tmp_path / "lib.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip file
    sys.path.append(str(archive))
    assert entrypoints._scan(GROUP) is None
    sys.path.remove(str(archive))
    egg = tmp_path / "thing-1.0.egg"
    (egg / "EGG-INFO").mkdir(parents=True)
    sys.path.append(str(egg))
    assert entrypoints._scan(GROUP) is None


def test_missing_path_entries_are_skipped(tmp_path: Path, site: Path) -> None:
    sys.path.insert(0, str(tmp_path / "does-not-exist"))
    _dist(site, "plugin-1.0.dist-info", _section("one = a:B"))
    assert _pairs(entrypoints._scan(GROUP) or []) == [("one", "a:B")] == _metadata_pairs(GROUP)


def test_another_distribution_finder_is_left_to_importlib_metadata(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Finder:
        @staticmethod
        def find_distributions(*args: object, **kwargs: object) -> list[object]:
            return []

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    assert entrypoints._scan(GROUP) is None


def test_a_directory_listed_twice_is_one_distribution(site: Path) -> None:
    _dist(site, "plugin-1.0.dist-info", _section("one = a:B"))
    sys.path.append(str(site))
    assert _pairs(entrypoints._scan(GROUP) or []) == [("one", "a:B")] == _metadata_pairs(GROUP)

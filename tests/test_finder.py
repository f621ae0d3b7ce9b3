"""Tests for kernelkeeper.finder: providers, kernel type names, resolution."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernelkeeper import finder, kernelspec
from kernelkeeper.errors import KernelSpecError, NoSuchKernel
from kernelkeeper.finder import (
    IPykernelProvider,
    KernelFinder,
    KernelProvider,
    KernelSpecProvider,
)
from kernelkeeper.kernelspec import KernelSpec


@pytest.fixture
def kdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernels/ directory that is the only place kernelspecs are looked for."""
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    # Keep the venv's own python3 kernelspec (shipped by ipykernel) and the
    # user's kernels out of the picture.
    monkeypatch.setattr(kernelspec, "kernel_dirs", lambda: [str(kernels)])
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "userdata"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return kernels


def install(kernels: Path, name: str, content: Any) -> Path:
    d = kernels / name
    d.mkdir()
    text = content if isinstance(content, str) else json.dumps(content)
    (d / "kernel.json").write_text(text, encoding="utf-8")
    return d


def spec_json(display_name: str, argv0: str = "python3") -> dict[str, Any]:
    return {"argv": [argv0, "-f", "{connection_file}"], "display_name": display_name}


class FakeProvider(KernelProvider):
    """A provider with fixed kernels that records launches."""

    id = "fake"

    def __init__(self, kernels: dict[str, KernelSpec] | None = None) -> None:
        self.kernels = (
            kernels
            if kernels is not None
            else {
                "Remote": KernelSpec(argv=("remote", "{connection_file}"), display_name="Remote"),
            }
        )
        self.launched: list[tuple[str, dict[str, Any]]] = []

    def find_kernels(self) -> Iterator[tuple[str, KernelSpec]]:
        yield from self.kernels.items()

    async def launch(self, name: str, **params: Any) -> tuple[Any, Any]:
        self.launched.append((name, params))
        return ("conn", self.get_spec(name))


class ExplodingProvider(KernelProvider):
    id = "boom"

    def find_kernels(self) -> Iterator[tuple[str, KernelSpec]]:
        raise RuntimeError("provider is broken")
        yield  # pragma: no cover


# --- providers -------------------------------------------------------------------------------


def test_ipykernel_provider() -> None:
    assert importlib.util.find_spec("ipykernel") is not None  # a dependency of ours
    kernels = list(IPykernelProvider().find_kernels())
    assert [name for name, _ in kernels] == ["kernel"]
    spec = kernels[0][1]
    assert spec.argv == (sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}")
    assert spec.display_name == "Python 3 (ipykernel)"
    assert spec.language == "python"
    # ipykernel 7.4+ reads CurveZMQ keys from its connection file.
    curve = finder._release(importlib.metadata.version("ipykernel")) >= (7, 4)
    expected: dict[str, Any] = {"debugger": True}
    if curve:
        expected["supported_encryption"] = ["curve"]
    assert dict(spec.metadata) == expected
    assert spec.name == "python3"
    assert spec.format_argv("/c.json")[-1] == "/c.json"


@pytest.mark.parametrize(
    ("version", "curve"),
    [
        ("7.4.0", True),
        ("7.10.1", True),
        ("8.0", True),
        ("7.4.0rc1", True),
        ("7.3.9", False),
        ("6.29.5", False),
        ("7", False),
        ("garbage", False),
    ],
)
def test_pyimport_declares_curve_by_ipykernel_version(
    monkeypatch: pytest.MonkeyPatch, version: str, curve: bool
) -> None:
    # Older ipykernels cannot be installed side by side: stand in for the
    # metadata lookup only (ipykernel itself is never imported for this).
    real_version = importlib.metadata.version

    def fake_version(name: str) -> str:
        return version if name == "ipykernel" else real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", fake_version)
    finder._ipykernel_supports_curve.cache_clear()
    try:
        meta = IPykernelProvider._spec().metadata
        assert ("supported_encryption" in meta) is curve
        if curve:
            assert list(meta["supported_encryption"]) == ["curve"]
    finally:
        finder._ipykernel_supports_curve.cache_clear()


def test_ipykernel_provider_without_ipykernel(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "ipykernel" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    assert list(IPykernelProvider().find_kernels()) == []
    with pytest.raises(NoSuchKernel):
        IPykernelProvider().get_spec("kernel")


def test_kernelspec_provider_lists_installed_and_skips_broken(kdir: Path) -> None:
    install(kdir, "alpha", spec_json("Alpha"))
    install(kdir, "broken", "{nope")
    found = dict(KernelSpecProvider().find_kernels())
    assert list(found) == ["alpha"]
    assert found["alpha"].display_name == "Alpha"
    assert KernelSpecProvider().get_spec("ALPHA").name == "alpha"
    with pytest.raises(KernelSpecError):
        KernelSpecProvider().get_spec("broken")
    with pytest.raises(NoSuchKernel):
        KernelSpecProvider().get_spec("gamma")


def test_spec_with_missing_executable_is_broken(kdir: Path) -> None:
    bad = install(kdir, "gone", spec_json("Gone", argv0="/nonexistent/kernel-binary"))
    install(kdir, "alpha", spec_json("Alpha"))
    found = dict(KernelSpecProvider().find_kernels())
    assert list(found) == ["alpha"]
    kf = KernelFinder()
    for kernel_type in ("spec/gone", "gone"):
        with pytest.raises(KernelSpecError) as info:
            kf.get_spec(kernel_type)
        assert not isinstance(info.value, NoSuchKernel)
        assert info.value.path == str(bad / "kernel.json")
        assert "/nonexistent/kernel-binary" in str(info.value)


def test_default_get_spec_is_case_insensitive() -> None:
    provider = FakeProvider()
    assert provider.get_spec("remote").display_name == "Remote"
    with pytest.raises(NoSuchKernel) as info:
        provider.get_spec("other")
    assert info.value.available == ["Remote"]


# --- the finder ------------------------------------------------------------------------------


def test_find_kernels_names(kdir: Path) -> None:
    install(kdir, "alpha", spec_json("Alpha"))
    kf = KernelFinder([KernelSpecProvider(), IPykernelProvider(), FakeProvider()])
    names = [name for name, _ in kf.find_kernels()]
    assert names == ["spec/alpha", "pyimport/kernel", "fake/Remote"]


def test_default_providers() -> None:
    kf = KernelFinder()
    assert [p.id for p in kf.providers] == ["spec", "pyimport"]


def test_resolve_explicit_and_bare(kdir: Path) -> None:
    install(kdir, "alpha", spec_json("Alpha"))
    kf = KernelFinder()
    provider, name = kf.resolve("spec/alpha")
    assert isinstance(provider, KernelSpecProvider)
    assert name == "alpha"
    provider, name = kf.resolve("alpha")
    assert isinstance(provider, KernelSpecProvider)
    assert name == "alpha"
    assert kf.get_spec("alpha").display_name == "Alpha"
    assert kf.get_spec("SPEC/Alpha").display_name == "Alpha"
    assert kf.get_spec("pyimport/kernel").argv[0] == sys.executable


def test_python3_falls_back_to_pyimport(kdir: Path) -> None:
    kf = KernelFinder()
    for kernel_type in ("python3", "python", "Python3", "", None):
        provider, name = kf.resolve(kernel_type)
        assert isinstance(provider, IPykernelProvider), kernel_type
        assert name == "kernel"
    assert kf.get_spec().argv[:3] == (sys.executable, "-m", "ipykernel_launcher")


def test_installed_python3_spec_wins_over_fallback(kdir: Path) -> None:
    install(kdir, "python3", spec_json("Installed Python", argv0="python3"))
    kf = KernelFinder()
    provider, name = kf.resolve("python3")
    assert isinstance(provider, KernelSpecProvider)
    assert name == "python3"
    assert kf.get_spec("").display_name == "Installed Python"
    # "python" is not an installed name, so it still means the pyimport kernel.
    assert isinstance(kf.resolve("python")[0], IPykernelProvider)


def test_broken_spec_propagates_instead_of_no_such_kernel(kdir: Path) -> None:
    bad = install(kdir, "python3", {"argv": "python3 -m ipykernel"})
    kf = KernelFinder()
    for kernel_type in ("spec/python3", "python3"):
        with pytest.raises(KernelSpecError) as info:
            kf.get_spec(kernel_type)
        assert not isinstance(info.value, NoSuchKernel)
        assert str(bad / "kernel.json") in str(info.value)
    # The explicit pyimport kernel is unaffected.
    assert kf.get_spec("pyimport/kernel").argv[0] == sys.executable


def test_unknown_kernel_lists_available(kdir: Path) -> None:
    install(kdir, "alpha", spec_json("Alpha"))
    kf = KernelFinder([KernelSpecProvider(), IPykernelProvider(), FakeProvider()])
    for kernel_type in ("nope", "spec/nope", "nosuchprovider/alpha", "spec/", "fake/kernel"):
        with pytest.raises(LookupError) as info:
            kf.resolve(kernel_type)
        err = info.value
        assert isinstance(err, NoSuchKernel)
        assert err.name == kernel_type
        assert set(err.available) == {
            "spec/alpha",
            "pyimport/kernel",
            "fake/Remote",
            "alpha",
            "kernel",
            "Remote",
        }
        assert "spec/alpha" in str(err)


def test_python_fallback_needs_pyimport_provider(kdir: Path) -> None:
    kf = KernelFinder([KernelSpecProvider()])
    with pytest.raises(NoSuchKernel):
        kf.resolve("python3")


def test_fake_provider_instance(kdir: Path) -> None:
    fake = FakeProvider()
    kf = KernelFinder(providers=[fake])
    assert [name for name, _ in kf.find_kernels()] == ["fake/Remote"]
    assert kf.resolve("fake/remote") == (fake, "remote")
    assert kf.resolve("Remote") == (fake, "Remote")
    assert kf.get_spec("FAKE/Remote").display_name == "Remote"

    conn, manager = asyncio.run(kf.launch("fake/Remote", cwd="/tmp"))
    assert conn == "conn"
    assert manager.display_name == "Remote"
    assert fake.launched == [("Remote", {"cwd": "/tmp"})]


def test_bare_name_prefers_earlier_provider(kdir: Path) -> None:
    install(kdir, "remote", spec_json("Local spec"))
    fake = FakeProvider()
    kf = KernelFinder([KernelSpecProvider(), fake])
    provider, _ = kf.resolve("remote")
    assert isinstance(provider, KernelSpecProvider)
    assert kf.resolve("fake/remote")[0] is fake
    kf_reversed = KernelFinder([fake, KernelSpecProvider()])
    assert kf_reversed.resolve("remote")[0] is fake


def test_failing_provider_is_skipped(kdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    install(kdir, "alpha", spec_json("Alpha"))
    kf = KernelFinder([ExplodingProvider(), KernelSpecProvider()])
    with caplog.at_level(logging.WARNING, logger="kernelkeeper.finder"):
        names = [name for name, _ in kf.find_kernels()]
        provider, _ = kf.resolve("alpha")
    assert names == ["spec/alpha"]
    assert isinstance(provider, KernelSpecProvider)
    assert any("boom" in r.getMessage() for r in caplog.records)
    # Named explicitly, the provider's own error is not hidden.
    with pytest.raises(RuntimeError, match="provider is broken"):
        kf.resolve("boom/anything")


def test_provider_ids_must_be_unique_and_slash_free() -> None:
    with pytest.raises(ValueError, match="share"):
        KernelFinder([FakeProvider(), FakeProvider()])

    class Slashed(FakeProvider):
        id = "a/b"

    with pytest.raises(ValueError, match="id"):
        KernelFinder([Slashed()])


def test_provider_default_launch_uses_launch_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[KernelSpec, dict[str, Any]]] = []

    async def fake_launch_kernel(spec: KernelSpec, **params: Any) -> tuple[Any, Any]:
        calls.append((spec, params))
        return "info", "manager"

    # The real kernelkeeper.launch may not exist yet or may be heavy; the default
    # KernelProvider.launch only needs its launch_kernel attribute.
    fake_module = type(sys)("kernelkeeper.launch")
    fake_module.launch_kernel = fake_launch_kernel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kernelkeeper.launch", fake_module)
    import kernelkeeper

    monkeypatch.setattr(kernelkeeper, "launch", fake_module, raising=False)

    class Plain(KernelProvider):
        id = "plain"

        def find_kernels(self) -> Iterator[tuple[str, KernelSpec]]:
            yield "k", KernelSpec(argv=("k",), display_name="K")

    kf = KernelFinder([Plain()])
    assert asyncio.run(kf.launch("k", timeout=5)) == ("info", "manager")
    assert calls == [(KernelSpec(argv=("k",), display_name="K"), {"timeout": 5})]


# --- entry points ----------------------------------------------------------------------------


def test_from_entrypoints_has_builtin_providers() -> None:
    kf = KernelFinder.from_entrypoints()
    ids = [p.id for p in kf.providers]
    assert ids[:2] == ["spec", "pyimport"]
    assert isinstance(kf.providers[0], KernelSpecProvider)
    assert isinstance(kf.providers[1], IPykernelProvider)


class _EP:
    """Just enough of importlib.metadata.EntryPoint for from_entrypoints."""

    def __init__(self, name: str, target: Any) -> None:
        self.name = name
        self.value = f"tests:{name}"
        self._target = target

    def load(self) -> Any:
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


def test_from_entrypoints_orders_and_skips_failures(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Zeta(FakeProvider):
        id = "zeta"

    class Alpha(FakeProvider):
        id = "alpha"

    eps = [
        _EP("zeta", Zeta),
        _EP("broken", ImportError("no module named nowhere")),
        _EP("pyimport", IPykernelProvider),
        _EP("notaprovider", dict),
        _EP("alpha", Alpha),
        _EP("spec", KernelSpecProvider),
    ]

    def fake_entry_points(*, group: str) -> list[_EP]:
        assert group == "kernelkeeper.kernel_providers"
        return eps

    monkeypatch.setattr(finder, "entry_points", fake_entry_points)
    with caplog.at_level(logging.WARNING, logger="kernelkeeper.finder"):
        kf = KernelFinder.from_entrypoints()
    assert [p.id for p in kf.providers] == ["spec", "pyimport", "alpha", "zeta"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "broken" in messages
    assert "notaprovider" in messages


def test_from_entrypoints_falls_back_without_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finder, "entry_points", lambda *, group: [])
    kf = KernelFinder.from_entrypoints()
    assert [p.id for p in kf.providers] == ["spec", "pyimport"]

"""Kernel discovery through provider plugins.

A *kernel type* is named ``provider_id/name``: ``spec/python3`` is the installed
kernelspec ``python3``, ``pyimport/kernel`` is ipykernel in the current
interpreter. Providers are found through the ``kernelkeeper.kernel_providers``
entry point group, so other packages can add kernel types (remote kernels,
containers, ...) without touching kernelkeeper.
"""

from __future__ import annotations

import abc
import functools
import importlib.util
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from . import kernelspec
from .entrypoints import entry_points
from .errors import KernelSpecError, NoSuchKernel
from .kernelspec import KernelSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "IPykernelProvider",
    "KernelFinder",
    "KernelProvider",
    "KernelSpecProvider",
    "default_finder",
]

logger = logging.getLogger("kernelkeeper.finder")

ENTRY_POINT_GROUP = "kernelkeeper.kernel_providers"

# Bare names that mean "some Python kernel" even when no kernelspec of that
# name is installed. An empty or missing kernel type means the default, which
# is Jupyter's usual "python3".
_PYTHON_ALIASES = frozenset({"python", "python3"})
_DEFAULT_KERNEL = "python3"


class KernelProvider(abc.ABC):
    """A source of kernel types. Subclasses set ``id`` and implement :meth:`find_kernels`."""

    id: str

    @abc.abstractmethod
    def find_kernels(self) -> Iterator[tuple[str, KernelSpec]]:
        """Yield ``(name, spec)`` for every kernel this provider offers."""

    def get_spec(self, name: str) -> KernelSpec:
        """The spec of the kernel called ``name`` (case-insensitive), or :class:`NoSuchKernel`."""
        wanted = name.lower()
        seen: list[str] = []
        for found, spec in self.find_kernels():
            if found.lower() == wanted:
                return spec
            seen.append(found)
        raise NoSuchKernel(name, seen)

    async def launch(self, name: str, **params: Any) -> tuple[Any, Any]:
        """Start the kernel called ``name``; returns ``(connection_info, manager)``."""
        # Imported here: launch depends on this module's neighbours, and a
        # provider that overrides launch should not pay for importing it.
        from .launch import launch_kernel

        result: tuple[Any, Any] = await launch_kernel(self.get_spec(name), **params)
        return result

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={getattr(self, 'id', None)!r}>"


class KernelSpecProvider(KernelProvider):
    """Kernels installed as kernelspecs in the Jupyter data directories."""

    id = "spec"

    def find_kernels(self) -> Iterator[tuple[str, KernelSpec]]:
        # Broken specs were already logged by list_kernel_specs.
        specs, _broken = kernelspec.list_kernel_specs()
        yield from sorted(specs.items())

    def get_spec(self, name: str) -> KernelSpec:
        # Direct lookup rather than the listing, so that a kernelspec which exists
        # but is broken raises KernelSpecError instead of looking absent.
        return kernelspec.get_kernel_spec(name)


class IPykernelProvider(KernelProvider):
    """ipykernel in the running interpreter, usable without any installed kernelspec."""

    id = "pyimport"

    def find_kernels(self) -> Iterator[tuple[str, KernelSpec]]:
        try:
            available = importlib.util.find_spec("ipykernel") is not None
        except (ImportError, ValueError):
            available = False
        if available:
            yield "kernel", self._spec()

    @staticmethod
    def _spec() -> KernelSpec:
        metadata: dict[str, Any] = {"debugger": True}
        if _ipykernel_supports_curve():
            metadata["supported_encryption"] = ["curve"]
        return KernelSpec(
            argv=(sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"),
            display_name="Python 3 (ipykernel)",
            language="python",
            metadata=metadata,
            name="python3",
        )


# ipykernel reads curve_publickey/curve_secretkey from its connection file
# from this version on.
_CURVE_IPYKERNEL = (7, 4)


@functools.cache
def _ipykernel_supports_curve() -> bool:
    """Does the installed ipykernel do CurveZMQ? Asked of its metadata: importing
    ipykernel (IPython, tornado, ...) would cost a third of a second. Cached: the
    metadata scan costs ~0.7 ms and every start resolves a kernel type."""
    import importlib.metadata  # here: ~1.5-3 MiB resident, and few starts need it

    try:
        version = importlib.metadata.version("ipykernel")
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return _release(version) >= _CURVE_IPYKERNEL


def _release(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: "7.4.0rc1" -> (7, 4, 0)."""
    parts: list[int] = []
    for piece in version.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def _builtin_providers() -> list[KernelProvider]:
    return [KernelSpecProvider(), IPykernelProvider()]


def _provider_order(provider: KernelProvider) -> tuple[int, str]:
    rank = {"spec": 0, "pyimport": 1}
    return rank.get(provider.id, 2), provider.id


class KernelFinder:
    """Find kernel types across providers and launch them by ``provider/name``."""

    def __init__(self, providers: Sequence[KernelProvider] | None = None) -> None:
        """Use ``providers`` in the given order; by default the built-in ones."""
        chosen = _builtin_providers() if providers is None else list(providers)
        seen: set[str] = set()
        for provider in chosen:
            pid = getattr(provider, "id", None)
            if not isinstance(pid, str) or not pid or "/" in pid:
                raise ValueError(f"provider {provider!r} needs a non-empty id without '/'")
            if pid.lower() in seen:
                raise ValueError(f"two providers share the id {pid!r}")
            seen.add(pid.lower())
        self._providers: tuple[KernelProvider, ...] = tuple(chosen)

    @classmethod
    def from_entrypoints(cls) -> KernelFinder:
        """Load every provider registered in the ``kernelkeeper.kernel_providers`` group.

        A provider that cannot be loaded or instantiated is logged and skipped. The
        built-in ``spec`` and ``pyimport`` providers are always present, so running
        from an uninstalled source tree still finds kernels.
        """
        loaded: dict[str, KernelProvider] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                provider = ep.load()()
            except Exception:
                logger.warning(
                    "Could not load kernel provider %r (%s)", ep.name, ep.value, exc_info=True
                )
                continue
            if not isinstance(provider, KernelProvider):
                logger.warning(
                    "Kernel provider %r (%s) is not a KernelProvider; skipped", ep.name, ep.value
                )
                continue
            pid = getattr(provider, "id", None)
            if not isinstance(pid, str) or not pid or "/" in pid:
                logger.warning("Kernel provider %r has an invalid id %r; skipped", ep.name, pid)
                continue
            if pid.lower() in loaded:
                logger.warning(
                    "Kernel provider id %r is registered more than once; keeping %r",
                    pid,
                    loaded[pid.lower()],
                )
                continue
            loaded[pid.lower()] = provider
        for builtin in _builtin_providers():
            loaded.setdefault(builtin.id, builtin)
        return cls(sorted(loaded.values(), key=_provider_order))

    @property
    def providers(self) -> tuple[KernelProvider, ...]:
        """The providers, in lookup order."""
        return self._providers

    def find_kernels(self) -> Iterator[tuple[str, KernelSpec]]:
        """Yield ``("provider_id/name", spec)`` for every kernel of every provider.

        A provider that fails while listing is logged and skipped, so one faulty
        plugin cannot hide every other kernel.
        """
        for provider in self._providers:
            try:
                found = list(provider.find_kernels())
            except Exception:
                logger.warning(
                    "Kernel provider %r failed to list kernels", provider.id, exc_info=True
                )
                continue
            for name, spec in found:
                yield f"{provider.id}/{name}", spec

    def resolve(self, kernel_type: str | None = None) -> tuple[KernelProvider, str]:
        """Turn ``provider/name`` or a bare ``name`` into ``(provider, name)``.

        A bare name goes to the first provider that has it. ``python``, ``python3``
        and the empty default fall back to ``pyimport/kernel`` when no provider has
        them. Raises :class:`NoSuchKernel`, or :class:`KernelSpecError` for a
        kernelspec that exists but is broken.
        """
        provider, name, _spec = self._resolve(kernel_type)
        return provider, name

    def get_spec(self, kernel_type: str | None = None) -> KernelSpec:
        """The spec for ``kernel_type``, resolved as in :meth:`resolve`."""
        _provider, _name, spec = self._resolve(kernel_type)
        return spec

    async def launch(self, kernel_type: str | None = None, **params: Any) -> tuple[Any, Any]:
        """Start a kernel of ``kernel_type``; returns ``(connection_info, manager)``."""
        provider, name = self.resolve(kernel_type)
        return await provider.launch(name, **params)

    def _resolve(self, kernel_type: str | None) -> tuple[KernelProvider, str, KernelSpec]:
        requested = (kernel_type or "").strip()
        if "/" in requested:
            pid, _, name = requested.partition("/")
            provider = self._provider(pid)
            if provider is not None:
                spec = self._lookup(provider, name, strict=True)
                if spec is not None:
                    return provider, name, spec
            raise NoSuchKernel(requested, self._available())

        bare = requested or _DEFAULT_KERNEL
        for provider in self._providers:
            spec = self._lookup(provider, bare, strict=False)
            if spec is not None:
                return provider, bare, spec
        if bare.lower() in _PYTHON_ALIASES:
            provider = self._provider(IPykernelProvider.id)
            if provider is not None:
                spec = self._lookup(provider, "kernel", strict=False)
                if spec is not None:
                    return provider, "kernel", spec
        raise NoSuchKernel(bare, self._available())

    def _provider(self, pid: str) -> KernelProvider | None:
        wanted = pid.lower()
        for provider in self._providers:
            if provider.id.lower() == wanted:
                return provider
        return None

    @staticmethod
    def _lookup(provider: KernelProvider, name: str, *, strict: bool) -> KernelSpec | None:
        """The provider's spec for ``name``, or None if it has no such kernel.

        A broken kernelspec always propagates. Other failures propagate when the
        provider was named explicitly (``strict``); while probing providers for a
        bare name they are logged so one faulty plugin does not block the rest.
        """
        if not name:
            return None
        try:
            return provider.get_spec(name)
        except NoSuchKernel:
            return None
        except KernelSpecError:
            raise
        except Exception:
            if strict:
                raise
            logger.warning(
                "Kernel provider %r failed looking up %r", provider.id, name, exc_info=True
            )
            return None

    def _available(self) -> list[str]:
        names: dict[str, None] = {}
        bare: dict[str, None] = {}
        for kernel_type, _spec in self.find_kernels():
            names[kernel_type] = None
            bare[kernel_type.partition("/")[2]] = None
        return [*names, *bare]


_default_finder: KernelFinder | None = None


def default_finder(refresh: bool = False) -> KernelFinder:
    """The process-wide finder built from the installed provider plugins.

    Loading entry points scans every installed distribution (milliseconds
    per call), so it is done once; kernelspecs themselves are still read
    from disk on every lookup. ``refresh=True`` reloads the plugins.
    """
    global _default_finder
    if _default_finder is None or refresh:
        _default_finder = KernelFinder.from_entrypoints()
    return _default_finder

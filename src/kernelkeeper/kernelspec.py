"""Kernel specifications: the ``kernel.json`` files that say how to start a kernel.

This module only reads and writes files; it never starts a process or opens a
socket.  Kernel types beyond installed kernelspecs are the business of
:mod:`kernelkeeper.finder`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import string
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from jupyter_core.paths import jupyter_path

from .errors import KernelSpecError, NoSuchKernel

__all__ = [
    "INTERRUPT_MODES",
    "KernelSpec",
    "find_kernel_specs",
    "get_kernel_spec",
    "kernel_dirs",
    "list_kernel_specs",
    "write_kernel_spec",
]

logger = logging.getLogger("kernelkeeper.kernelspec")

INTERRUPT_MODES = frozenset({"signal", "message"})

KERNEL_JSON = "kernel.json"

# Checked against the directory name as found on disk, ASCII only: with a
# Unicode-aware case-insensitive match, names like "\u212aernel" (Kelvin sign)
# would slip through and then lower-case into a different-looking name.
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+", re.ASCII)

# One pass over each argv element, so a substituted value that itself looks
# like "{resource_dir}" is never expanded a second time.
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")

# (kernel.json path, message) pairs already warned about, so that a server
# listing kernels every few seconds does not repeat the same warning forever.
_warned_broken: set[tuple[str, str]] = set()


def _empty_mapping() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class KernelSpec:
    """How to start one kind of kernel, as described by a ``kernel.json``."""

    argv: tuple[str, ...]
    display_name: str
    language: str = ""
    env: Mapping[str, str] = field(default_factory=_empty_mapping)
    interrupt_mode: str = "signal"
    metadata: Mapping[str, Any] = field(default_factory=_empty_mapping)
    resource_dir: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        _check_interrupt_mode(self.interrupt_mode, None)
        # Copy so later changes to the caller's containers cannot leak into a
        # spec that claims to be frozen.
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "metadata", MappingProxyType(copy.deepcopy(dict(self.metadata))))

    def __reduce__(self) -> tuple[Any, ...]:
        # mappingproxy cannot be pickled; rebuild from plain dicts instead.
        return (
            type(self),
            (
                self.argv,
                self.display_name,
                self.language,
                dict(self.env),
                self.interrupt_mode,
                dict(self.metadata),
                self.resource_dir,
                self.name,
            ),
        )

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        name: str = "",
        resource_dir: str = "",
        path: str | None = None,
    ) -> KernelSpec:
        """Build a spec from parsed ``kernel.json`` content, checking every field's type.

        ``path`` is only used in error messages. Unknown keys are ignored; a JSON
        ``null`` counts as absent for the optional fields.
        """
        if not isinstance(data, Mapping):
            raise KernelSpecError(
                f"kernel spec must be a JSON object, not {type(data).__name__}", path
            )

        argv = data.get("argv")
        if argv is None:
            raise KernelSpecError("kernel spec has no 'argv'", path)
        # A bare string is a sequence too, but certainly not an argv.
        if not isinstance(argv, (list, tuple)):
            raise KernelSpecError(
                f"'argv' must be a list of strings, not {type(argv).__name__}", path
            )
        if not argv:
            raise KernelSpecError("'argv' must not be empty", path)
        for i, arg in enumerate(argv):
            if not isinstance(arg, str):
                raise KernelSpecError(
                    f"'argv[{i}]' must be a string, not {type(arg).__name__}", path
                )

        display_name = _optional_str(data, "display_name", name, path)
        language = _optional_str(data, "language", "", path)
        interrupt_mode = _optional_str(data, "interrupt_mode", "signal", path)
        _check_interrupt_mode(interrupt_mode, path)

        env = data.get("env")
        if env is None:
            env = {}
        if not isinstance(env, Mapping):
            raise KernelSpecError(f"'env' must be an object, not {type(env).__name__}", path)
        for key, value in env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise KernelSpecError(
                    f"'env' must map strings to strings; bad entry {key!r}: {value!r}", path
                )

        metadata = data.get("metadata")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, Mapping):
            raise KernelSpecError(
                f"'metadata' must be an object, not {type(metadata).__name__}", path
            )

        return cls(
            argv=tuple(argv),
            display_name=display_name,
            language=language,
            env=env,
            interrupt_mode=interrupt_mode,
            metadata=metadata,
            resource_dir=resource_dir,
            name=name,
        )

    @classmethod
    def from_resource_dir(cls, path: str | os.PathLike[str], name: str | None = None) -> KernelSpec:
        """Read ``<path>/kernel.json``; the name defaults to the lower-cased directory name."""
        resource_dir = os.path.abspath(os.fspath(path))
        if name is None:
            name = os.path.basename(resource_dir).lower()
        json_path = os.path.join(resource_dir, KERNEL_JSON)
        try:
            with open(json_path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise KernelSpecError(
                f"cannot read kernel spec: {exc.strerror or exc}", json_path
            ) from exc
        except UnicodeDecodeError as exc:
            raise KernelSpecError(f"kernel spec is not valid UTF-8: {exc}", json_path) from exc
        except json.JSONDecodeError as exc:
            raise KernelSpecError(f"kernel spec is not valid JSON: {exc}", json_path) from exc
        return cls.from_dict(data, name=name, resource_dir=resource_dir, path=json_path)

    def to_dict(self) -> dict[str, Any]:
        """The spec in ``kernel.json`` shape (fresh containers, safe to modify)."""
        return {
            "argv": list(self.argv),
            "display_name": self.display_name,
            "language": self.language,
            "env": dict(self.env),
            "interrupt_mode": self.interrupt_mode,
            "metadata": copy.deepcopy(dict(self.metadata)),
        }

    def format_argv(self, connection_file: str, **extra: str) -> list[str]:
        """The command line to run, with ``{connection_file}``, ``{resource_dir}`` and
        ``{<key>}`` for each keyword in ``extra`` filled in.

        Unknown placeholders are left as they are. A leading ``python``, ``python3``
        or ``python3.<our minor>`` becomes :data:`sys.executable`, so a kernel
        installed in a virtual environment runs there even when it is not activated.
        """
        values: dict[str, str] = {"resource_dir": self.resource_dir}
        values.update(extra)
        values["connection_file"] = connection_file

        def substitute(match: re.Match[str]) -> str:
            return values.get(match.group(1), match.group(0))

        argv = [_PLACEHOLDER_RE.sub(substitute, arg) for arg in self.argv]
        if argv and sys.executable and argv[0] in _own_python_names():
            argv[0] = sys.executable
        return argv

    def format_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The spec's env with ``${VAR}`` taken from ``base`` (default: ``os.environ``).

        Variables missing from ``base`` stay literal rather than raising.
        """
        source: Mapping[str, str] = os.environ if base is None else base
        return {
            key: string.Template(value).safe_substitute(source) for key, value in self.env.items()
        }


def _own_python_names() -> frozenset[str]:
    major, minor = sys.version_info[:2]
    # Only names that must mean this interpreter's version: "python3.9" run
    # from a 3.12 venv asks for a different Python and is left alone.
    return frozenset({"python", f"python{major}", f"python{major}.{minor}"})


def _optional_str(data: Mapping[str, Any], key: str, default: str, path: str | None) -> str:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise KernelSpecError(f"{key!r} must be a string, not {type(value).__name__}", path)
    return value


def _check_interrupt_mode(mode: str, path: str | None) -> None:
    if not isinstance(mode, str) or mode not in INTERRUPT_MODES:
        raise KernelSpecError(f"'interrupt_mode' must be 'signal' or 'message', not {mode!r}", path)


def kernel_dirs() -> list[str]:
    """Directories searched for kernelspecs, highest priority first.

    Evaluated on every call so that changes to ``JUPYTER_PATH`` and friends apply.
    """
    return jupyter_path("kernels")


def find_kernel_specs() -> dict[str, str]:
    """Map each installed kernelspec name to its resource directory.

    Names are lower-cased directory names; where several directories provide the
    same name, the one earliest in :func:`kernel_dirs` wins. Only directories
    holding a ``kernel.json`` count; the file is not parsed here.
    """
    found: dict[str, str] = {}
    for kdir in kernel_dirs():
        try:
            entries = sorted(os.listdir(kdir))
        except OSError:
            # Missing or unreadable search directories are the common case.
            continue
        for entry in entries:
            if not _NAME_RE.fullmatch(entry):
                logger.debug("Ignoring kernelspec with invalid name %r in %s", entry, kdir)
                continue
            name = entry.lower()
            if name in found:
                continue
            resource_dir = os.path.join(kdir, entry)
            if os.path.isfile(os.path.join(resource_dir, KERNEL_JSON)):
                found[name] = resource_dir
    return found


def get_kernel_spec(name: str) -> KernelSpec:
    """Load the installed kernelspec called ``name`` (case-insensitive).

    Raises :class:`NoSuchKernel` if there is none, :class:`KernelSpecError` if its
    ``kernel.json`` is unusable.
    """
    specs = find_kernel_specs()
    key = name.lower()
    if key not in specs:
        raise NoSuchKernel(name, list(specs))
    return KernelSpec.from_resource_dir(specs[key], name=key)


def list_kernel_specs() -> tuple[dict[str, KernelSpec], dict[str, KernelSpecError]]:
    """Load every installed kernelspec.

    Returns the usable specs by name and the broken ones by ``kernel.json`` path.
    Each broken spec is also logged as a warning, once per distinct problem.
    """
    good: dict[str, KernelSpec] = {}
    broken: dict[str, KernelSpecError] = {}
    for name, resource_dir in find_kernel_specs().items():
        try:
            good[name] = KernelSpec.from_resource_dir(resource_dir, name=name)
        except KernelSpecError as exc:
            json_path = exc.path or os.path.join(resource_dir, KERNEL_JSON)
            broken[json_path] = exc
            key = (json_path, str(exc))
            if key not in _warned_broken:
                _warned_broken.add(key)
                logger.warning("Skipping broken kernelspec %r at %s: %s", name, json_path, exc)
    return good, broken


def write_kernel_spec(spec: KernelSpec, directory: str | os.PathLike[str]) -> str:
    """Write ``spec`` as ``<directory>/kernel.json``, creating the directory; return the path.

    The file is replaced atomically so a concurrent reader never sees half of it.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, KERNEL_JSON)
    # Not mkstemp: its 0600 mode would hide a system-wide kernelspec from other users.
    tmp_path = os.path.join(directory, f".{KERNEL_JSON}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp_path, "x", encoding="utf-8") as f:
            json.dump(spec.to_dict(), f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp_path, json_path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
        raise
    return json_path

"""Kernel specifications: the ``kernel.json`` files that say how to start a kernel.

This module only reads and writes files; it never starts a process or opens a
socket.  Kernel types beyond installed kernelspecs are the business of
:mod:`kernelkeeper.finder`.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import re
import shutil
import stat
import string
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import KernelExecutableNotFound, KernelSpecError, NoSuchKernel

__all__ = [
    "INTERRUPT_MODES",
    "KernelSpec",
    "check_executable",
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

# A kernel.json is a few hundred bytes; a huge one is a mistake, not a spec.
_MAX_SPEC = 1 << 24


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
        data = _load_json(json_path)
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
        """The command line to run, with ``{connection_file}``, ``{resource_dir}``,
        ``{prefix}`` (:data:`sys.prefix`, as jupyter_client fills it) and
        ``{<key>}`` for each keyword in ``extra`` filled in.

        Unknown placeholders are left as they are. A leading ``python``, ``python3``
        or ``python3.<our minor>`` becomes :data:`sys.executable`, so a kernel
        installed in a virtual environment runs there even when it is not activated.
        """
        values: dict[str, str] = {"resource_dir": self.resource_dir, "prefix": sys.prefix}
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
    # Imported on first use, as connection.runtime_dir does: jupyter_core.paths and
    # platformdirs are not needed by a process that never looks a kernelspec up.
    from jupyter_core.paths import jupyter_path

    return jupyter_path("kernels")


def _load_json(json_path: str) -> Any:
    """Parse ``json_path``, never blocking: a FIFO, a device or a directory is refused."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
        # writer forever. fstat on the opened file, not stat before opening,
        # so the check and the read see the same file.
        fd = os.open(json_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelSpecError(
            f"cannot read kernel spec: {_open_failure(exc, json_path)}", json_path
        ) from exc
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise KernelSpecError(f"kernel spec is {_file_kind(mode)}, not a regular file", json_path)
    with os.fdopen(fd, "rb") as f:
        try:
            raw = f.read(_MAX_SPEC + 1)
        except OSError as exc:
            raise KernelSpecError(
                f"cannot read kernel spec: {exc.strerror or exc}", json_path
            ) from exc
    if len(raw) > _MAX_SPEC:
        raise KernelSpecError(f"kernel spec is larger than {_MAX_SPEC} bytes", json_path)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise KernelSpecError(f"kernel spec is not valid UTF-8: {exc}", json_path) from exc
    except json.JSONDecodeError as exc:
        raise KernelSpecError(f"kernel spec is not valid JSON: {exc}", json_path) from exc
    except (ValueError, RecursionError) as exc:  # an over-long number, deep nesting
        raise KernelSpecError(f"kernel spec is not usable JSON: {exc}", json_path) from exc


def _open_failure(exc: OSError, path: str) -> str:
    if exc.errno == errno.ELOOP:
        return "it is a symlink loop"
    if exc.errno == errno.ENXIO:
        return "it is a socket"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return "it is a dangling symlink"
    if exc.errno == errno.EACCES:
        try:
            os.stat(path)
        except PermissionError:
            return "permission denied (its directory cannot be searched)"
        except OSError:
            pass
        return "permission denied"
    return exc.strerror or str(exc)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def check_executable(spec: KernelSpec) -> None:
    """Raise :class:`KernelSpecError` if the spec's ``argv[0]`` cannot be run.

    :class:`KernelExecutableNotFound` (also a ``FileNotFoundError``) when it
    does not exist; plain :class:`KernelSpecError` when it exists but cannot
    be run.

    Checked after the ``python`` rewrite of :meth:`KernelSpec.format_argv`. A
    bare name is looked up on ``PATH`` (the spec's own ``env`` PATH if it sets
    one); an absolute path must be an executable file. A relative path with a
    directory part depends on the kernel's working directory and is not checked.
    """
    path = os.path.join(spec.resource_dir, KERNEL_JSON) if spec.resource_dir else None
    exe = spec.format_argv("")[0]
    if not exe:
        raise KernelSpecError("'argv[0]' is empty", path)
    if "\0" in exe:
        raise KernelSpecError("'argv[0]' contains a NUL character", path)
    if os.sep not in exe:
        env = spec.format_env()
        search = env.get("PATH", os.environ.get("PATH", os.defpath))
        if shutil.which(exe, path=search) is None:
            where = "the PATH its 'env' sets" if "PATH" in env else "PATH"
            raise KernelExecutableNotFound(
                f"kernel executable {exe!r} (argv[0]) is not found on {where}", path, exe
            )
        return
    if not os.path.isabs(exe):
        return
    try:
        mode = os.stat(exe).st_mode
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise KernelExecutableNotFound(
                f"kernel executable {exe!r} (argv[0]) does not exist", path, exe
            ) from exc
        raise KernelSpecError(
            f"kernel executable {exe!r} (argv[0]) cannot be used: {exc.strerror}", path
        ) from exc
    except ValueError as exc:  # a lone surrogate: no file can have that name
        raise KernelSpecError(
            f"kernel executable {exe!r} (argv[0]) is not a valid file name", path
        ) from exc
    if not stat.S_ISREG(mode):
        raise KernelSpecError(
            f"kernel executable {exe!r} (argv[0]) is {_file_kind(mode)}, not a file", path
        )
    if not os.access(exe, os.X_OK):
        raise KernelSpecError(f"kernel executable {exe!r} (argv[0]) is not executable", path)


def _warn_once(path: str, message: str) -> None:
    key = (path, message)
    if key not in _warned_broken:
        _warned_broken.add(key)
        logger.warning("%s", message)


def _has_kernel_json(resource_dir: str) -> bool:
    """Is there something called kernel.json in ``resource_dir`` (usable or not)?"""
    try:
        os.lstat(os.path.join(resource_dir, KERNEL_JSON))
    except OSError as exc:
        # Absent, or the entry is a plain file: not a kernelspec. Anything else
        # (a directory we may not search, a symlink loop) is a broken one,
        # reported when it is loaded rather than silently missing.
        return exc.errno not in (errno.ENOENT, errno.ENOTDIR)
    return True


def _scan() -> tuple[dict[str, str], dict[str, KernelSpecError]]:
    """Installed kernelspecs by name, and the search directories that cannot be listed."""
    found: dict[str, str] = {}
    unlistable: dict[str, KernelSpecError] = {}
    for kdir in kernel_dirs():
        try:
            entries = sorted(os.listdir(kdir))
        except FileNotFoundError:
            continue  # most search directories do not exist: the normal case
        except OSError as exc:
            err = KernelSpecError(
                f"cannot list kernels directory: {_open_failure(exc, kdir)}", kdir
            )
            unlistable[kdir] = err
            _warn_once(kdir, f"Skipping kernelspecs in {kdir}: {err}")
            continue
        for entry in entries:
            if not _NAME_RE.fullmatch(entry):
                logger.debug("Ignoring kernelspec with invalid name %r in %s", entry, kdir)
                continue
            name = entry.lower()
            if name in found:
                continue
            resource_dir = os.path.join(kdir, entry)
            if _has_kernel_json(resource_dir):
                found[name] = resource_dir
    return found, unlistable


def find_kernel_specs() -> dict[str, str]:
    """Map each installed kernelspec name to its resource directory.

    Names are lower-cased directory names; where several directories provide the
    same name, the one earliest in :func:`kernel_dirs` wins. Every directory with
    an entry called ``kernel.json`` counts, usable or not (a broken one raises
    :class:`KernelSpecError` when loaded); the file is not parsed here. A search
    directory that exists but cannot be listed is logged (once) and reported by
    :func:`list_kernel_specs`.
    """
    return _scan()[0]


def _load_for_use(name: str, resource_dir: str) -> KernelSpec:
    spec = KernelSpec.from_resource_dir(resource_dir, name=name)
    check_executable(spec)
    return spec


def get_kernel_spec(name: str) -> KernelSpec:
    """Load the installed kernelspec called ``name`` (case-insensitive).

    Raises :class:`NoSuchKernel` if there is none, :class:`KernelSpecError` if its
    ``kernel.json`` is unusable (unreadable, malformed, or its executable missing).
    """
    specs = find_kernel_specs()
    key = name.lower()
    if key not in specs:
        raise NoSuchKernel(name, list(specs))
    return _load_for_use(key, specs[key])


def list_kernel_specs() -> tuple[dict[str, KernelSpec], dict[str, KernelSpecError]]:
    """Load every installed kernelspec.

    Returns the usable specs by name and the broken ones by ``kernel.json``
    path, with search directories that exist but cannot be listed keyed by the
    directory's path. Each broken spec is also logged as a warning, once per
    distinct problem.
    """
    good: dict[str, KernelSpec] = {}
    found, broken = _scan()
    for name, resource_dir in found.items():
        try:
            good[name] = _load_for_use(name, resource_dir)
        except KernelSpecError as exc:
            json_path = exc.path or os.path.join(resource_dir, KERNEL_JSON)
            broken[json_path] = exc
            _warn_once(json_path, f"Skipping broken kernelspec {name!r} at {json_path}: {exc}")
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

"""The entry points of one group, read without importlib.metadata where that is safe.

importlib.metadata brings email, zipfile and csv along: 1.5 to 3 MiB resident in
every process that resolves a kernel type, for the few lines of text the finder
reads. :func:`entry_points` reads the ``entry_points.txt`` files of the
distributions on ``sys.path`` itself when the answer cannot differ from
importlib.metadata's: plain directories, no other distribution finder, no
distribution name seen twice where one of them registers in the group, at most
one distribution registering in the group, every file well formed. Anything else
is left to importlib.metadata, which then gives its own answer (or error).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["EntryPoint", "EntryPointLike", "entry_points"]

# importlib.metadata.EntryPoint.pattern (the same from Python 3.10 to 3.13).
_PATTERN = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
_SUFFIXES = (".dist-info", ".egg-info")
# What importlib.metadata's PathDistribution.read_text takes for "no such file".
_ABSENT = (FileNotFoundError, IsADirectoryError, KeyError, NotADirectoryError, PermissionError)


class EntryPointLike(Protocol):
    """What the finder uses of an entry point (importlib.metadata's or ours)."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    def load(self) -> Any: ...


class EntryPoint:
    """One ``name = module:attr`` line of an ``entry_points.txt``, loaded as
    importlib.metadata's ``EntryPoint.load`` does."""

    __slots__ = ("group", "name", "value")

    def __init__(self, name: str, value: str, group: str) -> None:
        self.name = name
        self.value = value
        self.group = group

    def load(self) -> Any:
        """The module, or the object the value names inside it."""
        match = _PATTERN.match(self.value)
        if match is None:  # never: values are checked before an EntryPoint is made
            raise ValueError(f"malformed entry point value {self.value!r}")
        obj: Any = importlib.import_module(match.group("module"))
        for attr in filter(None, (match.group("attr") or "").split(".")):
            obj = getattr(obj, attr)
        return obj

    def __repr__(self) -> str:
        return f"EntryPoint(name={self.name!r}, value={self.value!r}, group={self.group!r})"


def entry_points(*, group: str) -> Sequence[EntryPointLike]:
    """The entry points registered in ``group``, as
    ``importlib.metadata.entry_points(group=group)`` gives them."""
    found = _scan(group)
    if found is None:
        from importlib.metadata import entry_points as metadata_entry_points

        return list(metadata_entry_points(group=group))
    return found


class _Unsure(Exception):
    """importlib.metadata might see this differently: ask it."""


def _scan(group: str) -> list[EntryPoint] | None:
    """The group's entry points read from the file system, or None when that read
    might not agree with importlib.metadata's."""
    try:
        texts = _entry_point_texts()
    except _Unsure:
        return None
    ours: list[str] = []
    for name_texts in texts.values():
        for text in name_texts:
            if text is None:
                continue
            if not _well_formed(text):
                return None  # importlib.metadata raises, or reads it its own way
            if group in text:
                if len(name_texts) > 1:
                    return None  # then which of them comes first matters
                ours.append(text)
    if len(ours) > 1:
        return None  # their order decides which of two same-id providers wins
    eps = [EntryPoint(n, v, g) for g, n, v in _pairs(ours[0]) if g == group] if ours else []
    if any(_PATTERN.match(ep.value) is None for ep in eps):
        return None
    return eps


def _entry_point_texts() -> dict[str, list[str | None]]:
    """Normalized distribution name -> the ``entry_points.txt`` of each distribution
    of that name on ``sys.path`` (None: it has none)."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:
        if getattr(finder, "find_distributions", None) is not None and finder is not PathFinder:
            raise _Unsure  # distributions that only that finder knows of
    texts: dict[str, dict[str, str | None]] = {}
    for root in sys.path:
        for name, path in _distributions_in(root):
            # The same folder reached twice (a directory listed twice on sys.path,
            # or through a symlink) is one distribution, whichever comes first.
            seen = texts.setdefault(name, {})
            real = os.path.realpath(path)
            if real not in seen:
                seen[real] = _read(path)
    return {name: list(by_path.values()) for name, by_path in texts.items()}


def _distributions_in(root: object) -> list[tuple[str, str]]:
    """``(normalized name, path)`` of the distribution folders in one ``sys.path``
    entry; :class:`_Unsure` where importlib.metadata would look at it differently
    (a zip file, an egg, a name it would read from the metadata)."""
    if not isinstance(root, str):
        raise _Unsure
    directory = root or "."
    try:
        children = os.listdir(directory)
    except OSError:
        if os.path.exists(directory):
            raise _Unsure from None
        return []
    base_is_egg = os.path.basename(root).lower().endswith(".egg")
    out: list[tuple[str, str]] = []
    for child in children:
        low = child.lower()
        if base_is_egg and low == "egg-info":
            raise _Unsure
        if not low.endswith(_SUFFIXES):
            continue
        stem, ext = os.path.splitext(child)
        name = stem.partition("-")[0]
        if ext not in _SUFFIXES or not name:
            raise _Unsure  # importlib.metadata reads this one's name from its metadata
        out.append((_normalize(name), os.path.join(root, child)))
    return out


def _normalize(name: str) -> str:
    """importlib.metadata's Prepared.normalize: PEP 503, dashes as underscores."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _read(dist_path: str) -> str | None:
    """The distribution's ``entry_points.txt``, or None if it has none."""
    try:
        with open(os.path.join(dist_path, "entry_points.txt"), encoding="utf-8") as f:
            return f.read()
    except _ABSENT:
        return None
    except (OSError, ValueError):  # ValueError: UnicodeDecodeError; importlib.metadata raises
        raise _Unsure from None


def _lines(text: str) -> list[str]:
    return [s for s in map(str.strip, text.splitlines()) if s and not s.startswith("#")]


def _well_formed(text: str) -> bool:
    """Every line inside a section is ``name = value`` (importlib.metadata raises
    on one that is not)."""
    section = False
    for line in _lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = True
        elif section and "=" not in line:
            return False
    return True


def _pairs(text: str) -> list[tuple[str, str, str]]:
    """``(group, name, value)`` of a well-formed ``entry_points.txt``, in order."""
    out: list[tuple[str, str, str]] = []
    group: str | None = None
    for line in _lines(text):
        if line.startswith("[") and line.endswith("]"):
            group = line.strip("[]")
        elif group is not None:
            name, value = line.split("=", 1)
            out.append((group, name.strip(), value.strip()))
    return out

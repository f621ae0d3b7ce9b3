"""What a ``POST /api/kernels`` may ask of a kernel's start: its environment, its
working directory, its launch timeout and its id. Pure functions, no I/O but
``os.path`` checks of a requested directory.

- ``KERNEL_*`` variables and the configured allow-list pass to the kernel;
  anything else a client sends is dropped.
- A value with a shell metacharacter or a control character is refused
  (400), naming the key and never echoing the value: kernelspecs and
  wrappers that interpolate variables into a shell command cannot be
  injected through us.
- ``KERNEL_WORKING_DIR``, ``KERNEL_LAUNCH_TIMEOUT`` and ``KERNEL_ID`` are
  the gateway's to read and are not passed on (so a request that sends only
  those can still be served by a warm pool).
- The kernel's base environment is ours without its secrets
  (:func:`base_environment`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError

__all__ = ["EnvPolicy", "LaunchRequest", "base_environment", "parse_launch", "valid_kernel_id"]

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
_KERNEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# What a POSIX shell gives a meaning to wherever it appears: quotes, expansion,
# redirection, command separators and grouping. Spaces, slashes, ``=``, ``:``,
# ``,``, ``@``, ``#``, ``+``, ``%`` and ``-`` stay allowed: paths and URLs need them.
_SHELL_META = frozenset("`$;&|<>\\'\"(){}")
# Names of our own environment that hold credentials: never given to a kernel.
_SECRET = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE|_KEY$|^KERNELKEEPER_GATEWAY_", re.I)

CONTROL_KEYS = frozenset({"KERNEL_WORKING_DIR", "KERNEL_LAUNCH_TIMEOUT", "KERNEL_ID"})


@dataclasses.dataclass(frozen=True)
class EnvPolicy:
    """What a start request may set.

    :param allowed_envs: names besides ``KERNEL_*`` that pass to the kernel.
    :param working_dir_root: ``KERNEL_WORKING_DIR`` must be a directory within
        it; ``None`` ignores ``KERNEL_WORKING_DIR`` (jupyter_server always sends
        its own notebook directory, which need not exist here).
    :param max_launch_timeout: the largest ``KERNEL_LAUNCH_TIMEOUT`` accepted.
    """

    allowed_envs: frozenset[str] = frozenset()
    working_dir_root: str | None = None
    max_launch_timeout: float = 3600.0


@dataclasses.dataclass(frozen=True)
class LaunchRequest:
    """A start request, checked: the variables for the kernel and the gateway's own."""

    env: dict[str, str]
    cwd: str | None = None
    launch_timeout: float | None = None
    kernel_id: str | None = None


def valid_kernel_id(kernel_id: Any) -> bool:
    """Is ``kernel_id`` usable as an id (and in a file name, ``kernel-<id>.json``)?"""
    return isinstance(kernel_id, str) and bool(_KERNEL_ID.match(kernel_id))


def _bad(key: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"env[{key}]: {why}")


def check_value(key: str, value: Any) -> str:
    """``value`` if it is a safe string, else :class:`ConfigurationError` naming ``key``."""
    if not isinstance(value, str):
        raise _bad(key, "the value must be a string")
    for ch in value:
        if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            raise _bad(key, "the value contains a control character")
        if ch in _SHELL_META:
            raise _bad(key, "the value contains a shell metacharacter")
    return value


def parse_launch(body: Mapping[str, Any], policy: EnvPolicy) -> LaunchRequest:
    """Check the ``env`` and ``kernel_id`` of a POST body; ConfigurationError (→ 400)
    names the offending key."""
    raw = body.get("env")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigurationError("env must be a JSON object of strings")
    env: dict[str, str] = {}
    control: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _KEY.match(key):
            shown = key[:64] if isinstance(key, str) else type(key).__name__
            raise ConfigurationError(f"env: {shown!r} is not a valid variable name")
        if not (key.startswith("KERNEL_") or key in policy.allowed_envs):
            continue
        checked = check_value(key, value)
        (control if key in CONTROL_KEYS else env)[key] = checked
    kernel_id = body.get("kernel_id") or control.get("KERNEL_ID")
    if kernel_id is not None and not valid_kernel_id(kernel_id):
        raise ConfigurationError(
            "kernel_id must be 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return LaunchRequest(
        env=env,
        cwd=_working_dir(control.get("KERNEL_WORKING_DIR"), policy),
        launch_timeout=_launch_timeout(control.get("KERNEL_LAUNCH_TIMEOUT"), policy),
        kernel_id=kernel_id,
    )


def _working_dir(value: str | None, policy: EnvPolicy) -> str | None:
    if value is None or policy.working_dir_root is None:
        return None
    root = os.path.realpath(policy.working_dir_root)
    path = os.path.realpath(os.path.join(root, os.path.expanduser(value)))
    if os.path.commonpath([root, path]) != root:
        raise _bad("KERNEL_WORKING_DIR", "the directory is outside the allowed root")
    if not os.path.isdir(path):
        raise _bad("KERNEL_WORKING_DIR", "no such directory")
    return path


def _launch_timeout(value: str | None, policy: EnvPolicy) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise _bad("KERNEL_LAUNCH_TIMEOUT", "the value must be a number of seconds") from None
    if not (math.isfinite(seconds) and 0 < seconds <= policy.max_launch_timeout):
        raise _bad(
            "KERNEL_LAUNCH_TIMEOUT", f"the value must be > 0 and <= {policy.max_launch_timeout:g}"
        )
    return seconds


def base_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without the variables that hold credentials (a token, a
    password, a key): the environment every kernel of the gateway starts from."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if not _SECRET.search(k)}

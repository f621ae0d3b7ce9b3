"""jupyter_client's traitlets-era constructor keywords, translated for our managers.

Code written for jupyter_client builds a kernel manager with ``config=`` (a
traitlets ``Config`` or a plain dict), ``parent=`` (whose config it
inherits) and ``log=``. :func:`translate_config` turns the keys of such a
config that configure a kernel manager into our constructor's keywords.
Pure data: nothing here imports traitlets or jupyter_client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULTS",
    "MANAGER_KEYS",
    "MANAGER_SECTIONS",
    "RESTARTER_KEYS",
    "UNSET",
    "manager_options",
    "translate_config",
]

#: The default of a constructor keyword not given (so that a config may set it).
UNSET: Any = object()

#: The manager's options a config may set, and their defaults.
DEFAULTS: dict[str, Any] = {
    "kernel_name": "",
    "transport": "tcp",
    "ip": "127.0.0.1",
    "connection_file": None,
    "shutdown_wait_time": 5.0,
    "autorestart": False,
    "restart_limit": 5,
    "heartbeat_interval": 3.0,
    "stable_start_time": None,
    "cache_ports": True,
}

#: Sections of a jupyter_client config that configure one kernel manager.
MANAGER_SECTIONS = (
    "ConnectionFileMixin",
    "KernelManager",
    "AsyncKernelManager",
    "IOLoopKernelManager",
    "AsyncIOLoopKernelManager",
)
#: Sections that configure jupyter_client's restarter (our restart policy).
RESTARTER_SECTIONS = ("KernelRestarter", "IOLoopKernelRestarter", "AsyncIOLoopKernelRestarter")

#: Kernel-manager keys with a meaning here, and the keyword each becomes.
MANAGER_KEYS = {
    "transport": "transport",
    "ip": "ip",
    "shutdown_wait_time": "shutdown_wait_time",
    "autorestart": "autorestart",
    "kernel_name": "kernel_name",
    "connection_file": "connection_file",
    "cache_ports": "cache_ports",
}
#: Restarter keys with a meaning here (None: accepted, nothing to set).
RESTARTER_KEYS: dict[str, str | None] = {
    "restart_limit": "restart_limit",
    "stable_start_time": "stable_start_time",
    "time_to_dead": "heartbeat_interval",
    # Only makes jupyter_client's restarter log more; our logging is set
    # through the logging module.
    "debug": None,
}


def _items(section: Any) -> Mapping[str, Any]:
    # A traitlets Config section is a dict subclass; anything else is no section.
    return section if isinstance(section, Mapping) else {}


def translate_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Our constructor keywords for the kernel-manager keys of ``config``.

    Sections configuring a kernel manager (``KernelManager``,
    ``AsyncKernelManager``, ...) and the restarter (``KernelRestarter``,
    ...) are read, in that order, later ones winning. Top-level lower-case
    keys (``{"transport": "ipc"}``, or ``c.transport = "ipc"``) count as
    kernel-manager keys. Other sections configure other classes (an
    application's whole config is often handed down) and are left alone.
    A key of ours with no meaning here raises :class:`TypeError` naming it.
    """
    if not config:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a traitlets Config or a dict, not {type(config).__name__}")
    out: dict[str, Any] = {}
    unknown: list[str] = []

    def take(where: str, values: Mapping[str, Any], known: Mapping[str, str | None]) -> None:
        for key, value in values.items():
            if key not in known:
                unknown.append(f"{where}{key}")
                continue
            target = known[key]
            if target is not None:
                out[target] = value

    flat = {k: v for k, v in config.items() if k[:1].islower()}
    take("", flat, MANAGER_KEYS)
    for name in MANAGER_SECTIONS:
        take(f"{name}.", _items(config.get(name)), MANAGER_KEYS)
    for name in RESTARTER_SECTIONS:
        take(f"{name}.", _items(config.get(name)), RESTARTER_KEYS)
    if unknown:
        raise TypeError(
            "config keys that kernelkeeper's kernel manager does not support: "
            + ", ".join(sorted(unknown))
            + f" (supported: {', '.join(sorted(MANAGER_KEYS))} and, for the restarter, "
            + f"{', '.join(sorted(RESTARTER_KEYS))})"
        )
    return out


def manager_options(config: Mapping[str, Any] | None, **given: Any) -> dict[str, Any]:
    """Every option of :data:`DEFAULTS`: a keyword given (not :data:`UNSET`) wins over
    ``config`` (see :func:`translate_config`), which wins over the default."""
    chosen = {k: v for k, v in given.items() if v is not UNSET}
    return {**DEFAULTS, **translate_config(config), **chosen}

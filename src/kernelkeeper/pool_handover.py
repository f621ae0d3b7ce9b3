"""What a pooled kernel is, and what a take changes in it (see :mod:`kernelkeeper.pool`).

:func:`plan_take` decides, with a stat or two, whether a take's ``kernel_id``,
``cwd`` and ``env`` can be honoured by a pooled kernel; :func:`hand_over`
applies ``cwd`` (and tells a Python kernel its new connection file) in one
silent execute.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from . import connection as _conn
from .client import AsyncKernelClient
from .manager import AsyncKernelManager

__all__ = ["Pooled", "hand_over", "plan_take", "pool_cwd", "pool_env"]

_HANDOVER_TIMEOUT = 30.0  # the silent execute of a take: one round trip, normally

# Run in the kernel through exec() with its own globals, so the user namespace
# gains nothing. The watchdog thread of _ipykernel_launcher holds the list of
# files it removes if the manager dies; a renamed connection file joins it.
_HANDOVER_BODY = """\
import os, sys, threading
if _kk_cwd is not None:
    os.chdir(_kk_cwd)
    _ipy = sys.modules.get("IPython")
    _ip = _ipy.get_ipython() if _ipy is not None else None
    _hm = getattr(_ip, "history_manager", None)
    if isinstance(getattr(_hm, "dir_hist", None), list):
        _hm.dir_hist[:] = [os.getcwd()]
if _kk_cf is not None:
    _ka = sys.modules.get("ipykernel.kernelapp")
    if _ka is not None and _ka.IPKernelApp.initialized():
        _ka.IPKernelApp.instance().connection_file = _kk_cf
    for _t in threading.enumerate():
        _a = getattr(_t, "_args", ())
        if _t.name == "kk-watch" and len(_a) == 2 and isinstance(_a[1], list):
            _a[1].append(_kk_cf)
"""


@dataclasses.dataclass(eq=False)
class Pooled:
    """A ready kernel in the pool, with what it was started with."""

    km: AsyncKernelManager
    born: float  # loop time at which its start began
    cwd: str  # resolved
    env: dict[str, str]
    autorestart: bool
    monitor_heartbeat: bool  # the factory's setting, restored on take
    watcher: asyncio.Task[None] | None = None
    #: A connected, ready client (no heartbeat channel), handed to the taker
    #: with the kernel so a hit needs no new sockets and no subscription handshake.
    client: AsyncKernelClient | None = None


async def hand_over(
    km: AsyncKernelManager,
    cwd: str | None,
    new_cf: str | None,
    warm: AsyncKernelClient | None = None,
) -> None:
    """One silent execute in the kernel: chdir, and learn its new connection file
    (on the pooled kernel's ``warm`` client when it has one, else a client of its own)."""
    code = f"exec({_HANDOVER_BODY!r}, {{'_kk_cwd': {cwd!r}, '_kk_cf': {new_cf!r}}})"
    check = {"cwd": f"__import__('os').path.samefile('.', {cwd!r})"} if cwd else {}
    kc = warm if warm is not None else km.client()
    hook = kc.status_hook
    kc.status_hook = None  # our own busy/idle must not move the manager's state
    if warm is None:
        kc.start_channels(iopub=False, stdin=False, hb=False, control=False)
    try:
        reply = await kc.execute(
            code,
            silent=True,
            store_history=False,
            user_expressions=check,
            allow_stdin=False,
            reply=True,
            timeout=_HANDOVER_TIMEOUT,
        )
    finally:
        if warm is None:
            await kc.aclose()
        else:
            kc.status_hook = hook
    content = reply["content"]
    if content.get("status") != "ok":
        raise OSError(
            f"the kernel could not apply the take: {content.get('ename')}: {content.get('evalue')}"
        )
    if cwd is not None:
        got = content.get("user_expressions", {}).get("cwd", {})
        if got.get("data", {}).get("text/plain") != "True":
            raise OSError(f"the kernel's working directory is not {cwd!r} ({got})")


def plan_take(
    entry: Pooled | None,
    start_kw: Mapping[str, Any],
    kernel_id: str | None,
    cwd: str | None,
    env: Mapping[str, str] | None,
) -> tuple[str | None, str | None, bool] | str:
    """What a take must change in ``entry``: ``(cwd or None, new connection
    file or None, run the hand-over execute)``, or why it cannot (a bypass).

    Without ``entry`` only the request itself is checked. (Plain, quick
    file system calls: a stat or two.)
    """
    if env is not None and dict(env) != (entry.env if entry else pool_env(start_kw)):
        return "env differs from the pool's"
    if cwd is not None:
        if not os.path.isdir(cwd):
            return "cwd is not a directory"
        cwd = os.path.realpath(cwd)
    if entry is None:
        return (None, None, False)
    km = entry.km
    python = km.kernel_spec.language.lower() == "python"
    if cwd == entry.cwd:
        cwd = None
    elif cwd is not None and not python:
        return "cwd differs and the kernel is not Python"
    new_cf = None
    if kernel_id is not None and kernel_id != km.kernel_id:
        if km.connection_file == _conn.connection_file_path(km.kernel_id):
            new_cf = _conn.connection_file_path(kernel_id)
            if os.path.lexists(new_cf):
                return f"{new_cf} exists"
    return (cwd, new_cf, new_cf is not None and python)


def pool_env(start_kw: Mapping[str, Any]) -> dict[str, str]:
    env = start_kw.get("env")
    return dict(env) if env is not None else dict(os.environ)


def pool_cwd(start_kw: Mapping[str, Any]) -> str:
    cwd = start_kw.get("cwd")
    return os.path.realpath(cwd if cwd is not None else os.getcwd())

"""kernelkeeper's managers dressed as subclasses of jupyter_client's, for traitlets.

nbclient's ``NotebookClient.kernel_manager_class`` (and so papermill's
``kernel_manager_class=``) is a traitlets ``Type(klass=jupyter_client.KernelManager)``:
only a subclass of jupyter_client's class passes its ``issubclass`` check, so the
core classes (which never import jupyter_client) cannot be named there. This
module, imported only by those who ask for it, imports jupyter_client and defines

* :class:`AsyncKernelManager`, a ``jupyter_client.AsyncKernelManager`` subclass
  that runs the kernel through :class:`kernelkeeper.AsyncKernelManager`;
* :class:`KernelManager`, a ``jupyter_client.KernelManager`` subclass that runs
  it through the blocking :class:`kernelkeeper.KernelManager`.

so that ``kernel_manager_class="kernelkeeper.jupyter_client_interop.AsyncKernelManager"``
works. They delegate; they do not inherit behaviour. Every public name of
jupyter_client's class is either forwarded to the kernelkeeper manager (the
lifecycle, the client, the connection, the restarter switches) or raises
:class:`InteropNotSupported`, so that nothing silently runs jupyter_client's own
machinery (its provisioners, its port reservation, its traitlets hooks such as
``pre_start_kernel``, which kernelkeeper never calls). Names jupyter_client does
not have (``state``, ``wait_ready``, ``add_event_listener``, ...) reach the
kernelkeeper manager too, and :attr:`kernelkeeper_manager` is that manager.

``config=``, ``parent=`` and ``kernel_name=`` go to the kernelkeeper manager,
which translates the keys it knows and rejects the ones that have no meaning
(see ``kernelkeeper.manager_config``).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

from jupyter_client.manager import AsyncKernelManager as _JupyterAsyncKernelManager
from jupyter_client.manager import KernelManager as _JupyterKernelManager
from traitlets import TraitType
from traitlets.config import LoggingConfigurable

from .blocking import KernelManager as _BlockingKernelManager
from .errors import InteropNotSupported
from .manager import AsyncKernelManager as _CoreAsyncKernelManager

__all__ = ["AsyncKernelManager", "InteropNotSupported", "KernelManager"]


#: Forwarded to the kernelkeeper manager as methods (coroutines where ours are).
FORWARDED_METHODS = (
    "start_kernel",
    "shutdown_kernel",
    "restart_kernel",
    "interrupt_kernel",
    "signal_kernel",
    "is_alive",
    "cleanup_resources",
    "request_shutdown",
    "finish_shutdown",
    "client",
    "blocking_client",
    "get_connection_info",
    "load_connection_file",
    "load_connection_info",
    "connect_shell",
    "connect_iopub",
    "connect_stdin",
    "connect_control",
    "connect_hb",
    "format_kernel_cmd",
    "update_env",
    "start_restarter",
    "stop_restarter",
    "add_restart_callback",
    "remove_restart_callback",
)

#: Read and written on the kernelkeeper manager (jupyter_client's traits of these
#: names are shadowed, so traitlets never holds a second, stale value).
FORWARDED_SETTABLE = (
    "kernel_name",
    "kernel_id",
    "transport",
    "ip",
    "connection_file",
    "shutdown_wait_time",
    "autorestart",
    "cache_ports",
    "transport_encryption",
    "session",
    "context",
    "ready",
)

#: Read from the kernelkeeper manager; setting them raises.
FORWARDED_READONLY = (
    "has_kernel",
    "ipykernel",
    "kernel_spec",
    "owns_kernel",
    "shutting_down",
    "provisioner",
)

PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")

# jupyter_client's magic-named trait defaults (``_ip_default``, ...): traitlets calls
# them only for traits, and the traits they serve are shadowed here.
_TRAIT_DEFAULT = re.compile(r"^_\w+_default$")


def _refuse(owner: str, name: str) -> InteropNotSupported:
    return InteropNotSupported(
        f"{owner}.{name} is jupyter_client machinery that the kernelkeeper interop class "
        "does not run; use the kernelkeeper manager's API (km.kernelkeeper_manager)"
    )


class _Delegating:
    """What both interop classes share: the kernelkeeper manager in ``_kk``, and the
    jupyter_client names read and written there."""

    #: The kernelkeeper class each instance wraps (set by the concrete classes).
    kernelkeeper_class: Any = None
    _kk: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Ours first: a meaningless keyword is the kernelkeeper manager's TypeError,
        # before traitlets sets anything up.
        kk = type(self).kernelkeeper_class(*args, **kwargs)
        self._kk = kk
        # Only the logger reaches traitlets: config and parent are the kernelkeeper
        # manager's to translate, and traitlets would warn about every key it
        # translates (those traits are shadowed here).
        init: Any = super().__init__  # jupyter_client's KernelManager, in the subclasses
        init(log=kk.log)

    @property
    def kernelkeeper_manager(self) -> Any:
        """The kernelkeeper manager that runs the kernel."""
        return self._kk

    def __getattr__(self, name: str) -> Any:
        # Reached only for names neither class has: kernelkeeper's own (state,
        # wait_ready, add_event_listener, ...). Private names stay traitlets' business.
        if name.startswith("_") or "_kk" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["_kk"], name)

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} of {self._kk!r}>"

    def __del__(self) -> None:
        # jupyter_client's __del__ closes its control socket and removes its connection
        # file; neither exists here, and the kernelkeeper manager cleans up after itself.
        pass

    @property
    def ports(self) -> list[int]:
        """The kernel's five ports (jupyter_client's order); zeros before the start."""
        info = self._kk.get_connection_info()
        return [int(info.get(name) or 0) for name in PORT_NAMES]


def _settable(name: str) -> property:
    def get(self: _Delegating) -> Any:
        return getattr(self._kk, name)

    def set_(self: _Delegating, value: Any) -> None:
        setattr(self._kk, name, value)

    return property(get, set_, doc=f"The kernelkeeper manager's ``{name}``.")


def _readonly(name: str, read: Callable[[Any], Any] | None = None) -> property:
    def get(self: _Delegating) -> Any:
        return read(self._kk) if read is not None else getattr(self._kk, name)

    def set_(self: _Delegating, value: Any) -> None:
        raise _refuse(type(self).__name__, f"{name} (set)")

    return property(get, set_, doc=f"The kernelkeeper manager's ``{name}`` (read-only).")


def _port(name: str) -> property:
    def read(kk: Any) -> int:
        return int(kk.get_connection_info().get(name) or 0)

    return _readonly(name, read)


def _refusing_property(name: str) -> property:
    def get(self: _Delegating) -> Any:
        raise _refuse(type(self).__name__, name)

    def set_(self: _Delegating, value: Any) -> None:
        raise _refuse(type(self).__name__, name)

    return property(get, set_, doc=f"jupyter_client's ``{name}``: not run here.")


def _refusing_method(name: str) -> Callable[..., Any]:
    def method(self: _Delegating, *args: Any, **kwargs: Any) -> Any:
        raise _refuse(type(self).__name__, name)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"jupyter_client's ``{name}``: not run here (raises InteropNotSupported)."
    return method


def _forwarder(name: str, target: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    if is_async:

        @functools.wraps(target)
        async def coro(self: _Delegating, *args: Any, **kwargs: Any) -> Any:
            return await getattr(self._kk, name)(*args, **kwargs)

        return coro

    @functools.wraps(target)
    def method(self: _Delegating, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._kk, name)(*args, **kwargs)

    return method


def _jupyter_names(base: type) -> dict[str, Any]:
    """jupyter_client's own members of ``base`` (not traitlets'), looked up statically."""
    common = set(dir(LoggingConfigurable))
    return {
        name: inspect.getattr_static(base, name)
        for name in dir(base)
        if name not in common and not name.startswith("__")
    }


def _shadow_the_rest(base: type) -> None:
    """Give :class:`_Delegating` a refusing stand-in for every member of ``base`` that
    is not forwarded, so no call silently runs jupyter_client's machinery."""
    forwarded = {
        *FORWARDED_METHODS,
        *FORWARDED_SETTABLE,
        *FORWARDED_READONLY,
        *PORT_NAMES,
        "ports",
    }
    for name, member in _jupyter_names(base).items():
        if name in forwarded or name in vars(_Delegating) or _TRAIT_DEFAULT.match(name):
            continue
        if isinstance(member, TraitType):
            if not name.startswith("_"):  # private traits are jupyter_client's bookkeeping
                setattr(_Delegating, name, _refusing_property(name))
        elif isinstance(member, property):
            setattr(_Delegating, name, _refusing_property(name))
        elif inspect.isfunction(member) or isinstance(member, staticmethod | classmethod):
            setattr(_Delegating, name, _refusing_method(name))


for _name in FORWARDED_SETTABLE:
    setattr(_Delegating, _name, _settable(_name))
for _name in FORWARDED_READONLY:
    setattr(_Delegating, _name, _readonly(_name))
for _name in PORT_NAMES:
    setattr(_Delegating, _name, _port(_name))
# The async class has every name the blocking one has (it is its subclass).
_shadow_the_rest(_JupyterAsyncKernelManager)


def _install_forwarders(cls: type, core: type, is_async: bool) -> None:
    for name in FORWARDED_METHODS:
        target = getattr(core, name)
        setattr(
            cls, name, _forwarder(name, target, is_async and inspect.iscoroutinefunction(target))
        )


# The shadowing properties must be in _Delegating before these classes are made:
# traitlets reads the traits of a class when it is created.
class AsyncKernelManager(_Delegating, _JupyterAsyncKernelManager):  # type: ignore[misc]
    """A ``jupyter_client.AsyncKernelManager`` that runs its kernel through
    :class:`kernelkeeper.AsyncKernelManager` (same constructor keywords)."""

    kernelkeeper_class = _CoreAsyncKernelManager


class KernelManager(_Delegating, _JupyterKernelManager):  # type: ignore[misc]
    """A ``jupyter_client.KernelManager`` that runs its kernel through the blocking
    :class:`kernelkeeper.KernelManager` (same constructor keywords)."""

    kernelkeeper_class = _BlockingKernelManager


_install_forwarders(AsyncKernelManager, _CoreAsyncKernelManager, is_async=True)
_install_forwarders(KernelManager, _CoreAsyncKernelManager, is_async=False)

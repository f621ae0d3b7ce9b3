"""Blocking faces, derived from the async classes at import.

A face wraps one async object living on a portal (a
:class:`~kernelkeeper.loopthread.LoopThread`). :func:`derive` gives a face
class every public member of its async class that the face does not define
itself, with the same name, signature and docstring:

* a method (plain or coroutine function) runs on the portal's loop and
  blocks until done; a coroutine or future it returns is awaited there (the
  protocol's ``reply=True`` requests return one);
* a property reads (and, if it has a setter, writes) through;
* a classmethod runs on the portal and returns the face of its result;
* anything else (instance attributes) is read and written through by
  ``__getattr__``/``__setattr__``.

Results are wrapped on the way out: an async object of a registered type
comes back as its face (the same face while it is in use), an
``asyncio.Future`` as a ``concurrent.futures.Future``. Faces passed as
arguments are unwrapped. Errors are mapped at this boundary
(:mod:`kernelkeeper.boundary`). A method added to an async class thus
appears on its blocking face with no wrapper to write; ``tests/test_surfaces.py``
checks that the two surfaces match.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from .boundary import mapped, translate
from .errors import LifecycleError
from .loopthread import LoopThread

__all__ = ["Face", "copy_meta", "derive", "face_of", "mirror", "register", "unwrap"]

F = TypeVar("F", bound="type[Face]")

#: Dunders derived too (the rest of a face's protocol is its own).
DERIVED_DUNDERS = ("__len__", "__contains__", "__iter__")

_registry: list[tuple[type, Callable[[Any, LoopThread], Face]]] = []
_faces: weakref.WeakValueDictionary[int, Face] = weakref.WeakValueDictionary()
_faces_lock = threading.Lock()


class Face:
    """A blocking face of one async object (``_async``) on one portal."""

    _async_cls: ClassVar[type] = object
    _async: Any
    _portal: LoopThread

    def _bind(self, target: Any, portal: LoopThread) -> None:
        object.__setattr__(self, "_async", target)
        object.__setattr__(self, "_portal", portal)
        with _faces_lock:
            _faces[id(target)] = self

    def __getattr__(self, name: str) -> Any:
        # Only for names the face does not have: the async object's instance
        # attributes (kernel_id, session, shell_channel, ...).
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            target = object.__getattribute__(self, "_async")
        except AttributeError:
            raise AttributeError(name) from None
        try:
            value = getattr(target, name)
        except AttributeError:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}"
            ) from None
        return _wrap_here(value, self._portal)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            setattr(self._async, name, unwrap(value))

    def __dir__(self) -> Iterable[str]:
        own = set(super().__dir__())
        return sorted(own | {n for n in dir(self._async) if not n.startswith("_")})

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the async object's ``name`` on the portal and wait for the result."""
        return call_on(self._portal, getattr(self._async, name), args, kwargs)


def call_on(
    portal: LoopThread, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``fn(*args, **kwargs)`` on ``portal``'s loop, awaited there if it is awaitable."""
    args = tuple(unwrap(a) for a in args)
    kwargs = {k: unwrap(v) for k, v in kwargs.items()}
    if portal.on_loop_thread():
        # Already on the loop (a hook calling kc.input()): plain calls only.
        with mapped():
            result = fn(*args, **kwargs)
        if asyncio.iscoroutine(result):
            result.close()
            raise LifecycleError(
                "A blocking kernelkeeper call was made from the library's own event-loop "
                "thread (e.g. inside a callback); use the async API there"
            )
        return _wrap_loop(result, portal)

    async def go() -> Any:
        result = fn(*args, **kwargs)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        return _wrap_loop(result, portal)

    try:
        return portal.run(go())
    except BaseException as e:
        new = translate(e)
        if new is e:
            raise
        raise new from e


def register(async_type: type, make: Callable[[Any, LoopThread], Face]) -> None:
    """Results of ``async_type`` come back as ``make(obj, portal)``."""
    _registry.insert(0, (async_type, make))  # later (more specific) registrations first


def face_of(obj: Any, portal: LoopThread) -> Any:
    """The face of ``obj`` (the one in use, or a new one), or ``obj`` if none applies."""
    with _faces_lock:
        face = _faces.get(id(obj))
    if face is not None and face._async is obj:
        return face
    for t, make in _registry:
        if isinstance(obj, t):
            return make(obj, portal)
    return obj


def unwrap(value: Any) -> Any:
    """The async object behind a face (anything else unchanged)."""
    return value._async if isinstance(value, Face) else value


def mirror(src: asyncio.Future[Any]) -> concurrent.futures.Future[Any]:
    """A thread-safe future settled like ``src`` (call on ``src``'s loop)."""
    dst: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def copy(f: asyncio.Future[Any]) -> None:
        if f.cancelled():
            dst.cancel()
        elif f.exception() is not None:
            dst.set_exception(f.exception())
        else:
            dst.set_result(f.result())

    if src.done():
        copy(src)
    else:
        src.add_done_callback(copy)
    return dst


def _wrap_loop(value: Any, portal: LoopThread) -> Any:
    # On the loop thread: futures can be mirrored here.
    if isinstance(value, asyncio.Future):
        return mirror(value)
    return face_of(value, portal)


def _wrap_here(value: Any, portal: LoopThread) -> Any:
    # In the caller's thread.
    if isinstance(value, asyncio.Future):
        return portal.call(mirror, value)
    return face_of(value, portal)


# -- derivation -------------------------------------------------------------------


def _method(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: Face, /, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    copy_meta(method, fn)
    return method


def _classmethod(name: str, fn: Callable[..., Any]) -> Any:
    def method(cls: type[Face], /, *args: Any, **kwargs: Any) -> Any:
        from .loopthread import portal as default_portal

        portal = kwargs.pop("portal", None) or default_portal()
        return call_on(portal, getattr(cls._async_cls, name), args, kwargs)

    copy_meta(method, fn, drop_first=True)
    return classmethod(method)


def _property(name: str, prop: property) -> property:
    def get(self: Face) -> Any:
        return _wrap_here(getattr(self._async, name), self._portal)

    def set_(self: Face, value: Any) -> None:
        setattr(self._async, name, unwrap(value))

    get.__doc__ = prop.__doc__
    return property(get, set_ if prop.fset is not None else None, doc=prop.__doc__)


def copy_meta(dst: Callable[..., Any], src: Callable[..., Any], drop_first: bool = False) -> None:
    """Give ``dst`` the name, docstring and signature of ``src``."""
    dst.__name__ = src.__name__
    dst.__qualname__ = src.__qualname__
    dst.__doc__ = src.__doc__
    try:
        sig = inspect.signature(src)
    except (TypeError, ValueError):  # pragma: no cover - builtins without one
        return
    if drop_first:
        params = list(sig.parameters.values())[1:]
        sig = sig.replace(parameters=params)
    dst.__signature__ = sig.replace(return_annotation=inspect.Signature.empty)  # type: ignore[attr-defined]


def public_names(cls: type) -> list[str]:
    """The members of ``cls`` a face derives: public names and a few dunders."""
    return [n for n in dir(cls) if not n.startswith("_") or n in DERIVED_DUNDERS]


def derive(async_cls: type, *, skip: Iterable[str] = ()) -> Callable[[F], F]:
    """Class decorator: give the face every member of ``async_cls`` it lacks."""

    def decorate(face_cls: F) -> F:
        face_cls._async_cls = async_cls
        own = {n for k in face_cls.__mro__ if k not in (Face, object) for n in vars(k)}
        for name in public_names(async_cls):
            if name in own or name in skip or not hasattr(async_cls, name):
                continue
            attr = inspect.getattr_static(async_cls, name)
            if isinstance(attr, property):
                setattr(face_cls, name, _property(name, attr))
            elif isinstance(attr, classmethod):
                setattr(face_cls, name, _classmethod(name, attr.__func__))
            elif isinstance(attr, staticmethod):
                setattr(face_cls, name, attr)
            elif inspect.isfunction(attr):
                setattr(face_cls, name, _method(name, attr))
            # Plain class data (defaults like allow_stdin) read through __getattr__.
        return face_cls

    return decorate

"""The public surfaces: async and blocking faces match, and both follow jupyter_client.

The blocking faces are derived from the async classes at import
(``kernelkeeper.face``); these tests check the result, not the mechanism:
every public member of an async class is on its blocking face with the same
parameters, the blocking-only extras are the listed ones, and the names
jupyter_client's classes have are all here but for the deliberate
differences listed below, each with its reason. No kernel is started.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import jupyter_client
import pytest
from traitlets.config import LoggingConfigurable

import kernelkeeper as kk
from kernelkeeper import face
from kernelkeeper.blocking_channels import BlockingChannel, BlockingHBChannel
from kernelkeeper.blocking_multi import MultiKernelManager
from kernelkeeper.channels import Channel, ChannelLink, HBChannel
from kernelkeeper.loopthread import LoopThread
from kernelkeeper.protocol import REQUESTS

# -- async versus blocking ----------------------------------------------------------------

#: Members only the blocking face has, by face.
BLOCKING_ONLY: dict[str, set[str]] = {
    "BlockingKernelClient": {"async_client"},
    "KernelManager": {"async_manager", "from_async"},
    "MultiKernelManager": {"async_manager", "close"},
    "BlockingChannel": set(),
    "BlockingHBChannel": set(),
}

#: Members whose blocking parameters differ on purpose.
SIGNATURE_DIFFERS: dict[str, str] = {
    "__init__": "the blocking faces also take portal= (and the client async_client=)",
    "from_async": "blocking only",
}


def _params(fn: Any) -> list[tuple[str, Any, Any]]:
    sig = inspect.signature(fn)
    out = []
    for p in sig.parameters.values():
        if p.name in ("self", "cls"):
            continue
        out.append((p.name, p.kind, p.default))
    return out


def surface_differences(async_obj: Any, blocking_obj: Any, extras: set[str]) -> list[str]:
    """Every way ``blocking_obj``'s public surface differs from ``async_obj``'s."""
    problems: list[str] = []
    async_cls, blocking_cls = type(async_obj), type(blocking_obj)
    names = {n for n in dir(async_obj) if not n.startswith("_")}
    for n in sorted(names):
        if not hasattr(blocking_obj, n):
            problems.append(f"missing on the blocking face: {n}")
            continue
        a = inspect.getattr_static(async_cls, n, None)
        b = inspect.getattr_static(blocking_cls, n, None)
        if isinstance(a, property) and not isinstance(b, property):
            problems.append(f"{n}: a property on the async class only")
        if isinstance(a, classmethod):
            a = a.__func__
        if isinstance(b, classmethod):
            b = b.__func__
        if inspect.isfunction(a) and n not in SIGNATURE_DIFFERS:
            if not callable(b):
                problems.append(f"{n}: not callable on the blocking face")
            elif _params(a) != _params(b):
                problems.append(f"{n}: {_params(a)} != {_params(b)}")
            elif inspect.iscoroutinefunction(b):
                problems.append(f"{n}: a coroutine function on the blocking face")
    blocking_names = {
        n for k in blocking_cls.__mro__ if k not in (face.Face, object) for n in vars(k)
    }
    own = {n for n in blocking_names if not n.startswith("_")} - names
    if own != extras:
        problems.append(f"blocking-only members {sorted(own)} != listed {sorted(extras)}")
    return problems


@pytest.fixture(scope="module")
def faces() -> Iterator[dict[str, tuple[Any, Any]]]:
    """One async object and its blocking face per class (nothing started)."""
    km = kk.KernelManager()
    kc = kk.BlockingKernelClient()
    mkm = MultiKernelManager()
    link = ChannelLink(kc.context, kc.session, None, lambda *a: None)
    channel, hb = Channel(link, "shell"), HBChannel(link)
    portal = kc._portal
    try:
        yield {
            "BlockingKernelClient": (kc.async_client, kc),
            "KernelManager": (km.async_manager, km),
            "MultiKernelManager": (mkm.async_manager, mkm),
            "BlockingChannel": (channel, BlockingChannel(channel, portal)),
            "BlockingHBChannel": (hb, BlockingHBChannel(hb, portal)),
        }
    finally:
        mkm.close()


@pytest.mark.parametrize("name", sorted(BLOCKING_ONLY))
def test_async_and_blocking_surfaces_match(name: str, faces: dict[str, tuple[Any, Any]]) -> None:
    async_obj, blocking_obj = faces[name]
    assert surface_differences(async_obj, blocking_obj, BLOCKING_ONLY[name]) == []


def test_the_comparison_can_fail() -> None:
    # A face that drifted (a parameter renamed, a member missing, an extra) is caught.
    class Core:
        def __init__(self) -> None:
            self.attr = 1

        async def ping(self, timeout: float | None = None) -> str:
            return "pong"

        def added(self, x: int) -> int:
            return x

    class Drifted(face.Face):
        def ping(self, wait: float | None = None) -> str:
            return "pong"

        def extra(self) -> None:
            pass

    portal = kk.BlockingKernelClient()._portal
    drifted = Drifted()
    drifted._bind(Core(), portal)
    problems = surface_differences(Core(), drifted, set())
    assert any(p.startswith("ping:") for p in problems), problems
    assert any("extra" in p for p in problems), problems

    # Derived, the same async class gives a face with nothing to report.
    @face.derive(Core)
    class Derived(face.Face):
        pass

    derived = Derived()
    derived._bind(Core(), portal)
    assert surface_differences(Core(), derived, set()) == []
    assert derived.ping(0.1) == "pong" and derived.added(2) == 2 and derived.attr == 1
    assert not inspect.iscoroutinefunction(Derived.ping)
    assert str(inspect.signature(Derived.ping)) == "(self, timeout: 'float | None' = None)"


def test_a_method_added_to_the_async_class_appears_on_the_blocking_face() -> None:
    # The derivation runs on the real classes: a subclass of the async client
    # with one more request gets a blocking face that has it, blocking.
    class More(kk.AsyncKernelClient):
        async def twice(self, code: str, *, timeout: float | None = None) -> list[str]:
            """Two ids."""
            return [self.kernel_info(), self.kernel_info()]

    @face.derive(More)
    class BlockingMore(kk.BlockingKernelClient):
        pass

    assert _params(BlockingMore.twice) == _params(More.twice)
    assert BlockingMore.twice.__doc__ == "Two ids."


def test_every_request_is_described_once_and_on_both_clients() -> None:
    assert {"execute", "kernel_info", "complete", "inspect", "history"} <= set(REQUESTS)
    assert {"is_complete", "comm_info", "shutdown"} <= set(REQUESTS)
    for name, req in REQUESTS.items():
        assert req.msg_type.endswith("_request") and req.channel in ("shell", "control")
        sync = inspect.getattr_static(kk.BlockingKernelClient, name)
        async_ = inspect.getattr_static(kk.AsyncKernelClient, name)
        assert _params(sync) == _params(async_) == _params(req.build), name
        params = inspect.signature(async_).parameters
        assert params["reply"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["timeout"].kind is inspect.Parameter.KEYWORD_ONLY


def test_blocking_reads_jupyter_client_signatures() -> None:
    # Timeout first, positionally (``kc.get_iopub_msg(0.5)``), on every face.
    for cls in (kk.AsyncKernelClient, kk.BlockingKernelClient):
        for name in ("get_shell_msg", "get_iopub_msg", "get_stdin_msg", "get_control_msg"):
            first = next(iter(inspect.signature(getattr(cls, name)).parameters.values()))
            if first.name == "self":
                first = list(inspect.signature(getattr(cls, name)).parameters.values())[1]
            assert first.name == "timeout" and first.default is None, (cls, name)
            assert first.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


# -- ours versus jupyter_client ------------------------------------------------------------

TRAITLETS = set(dir(LoggingConfigurable))

#: jupyter_client's public names we do not have, each with the reason.
CLIENT_DIFFERENCES = {
    "blocking_class": "a traitlets Type trait; the blocking face is kernelkeeper's own class",
    "blocking_client": "the async client never imports the blocking face (layering): "
    "use BlockingKernelClient(async_client=kc) or KernelManager.client()",
    "cleanup_random_ports": "a client reserves no ports (jupyter_client's ConnectionFileMixin "
    "shares this with the manager)",
    "data_dir": "a traitlets path for jupyter's data dir, which a client does not use",
    "ioloop": "jupyter_client's legacy attribute (always None there)",
}

#: Names the manager side has not (yet) taken over; checked one way only, so
#: the list may shrink as they arrive.
MANAGER_DIFFERENCES = {
    "blocking_class": "a traitlets Type trait",
    "client_class": "a traitlets Type trait: kernelkeeper's client() builds its own class",
    "client_factory": "a traitlets Type trait",
    "kernel_spec_manager": "kernelspecs are found by kernelkeeper's finder (finder=)",
    "data_dir": "a traitlets path",
    "pre_start_kernel": "provisioner internals",
    "post_start_kernel": "provisioner internals",
    "resolve_path": "provisioner internals",
    "cleanup_random_ports": "ports are chosen by the kernel (the handshake), none reserved",
    "cleanup_connection_file": "cleanup_resources() removes it",
    "cleanup_ipc_files": "cleanup_resources() removes them",
    "connect_control": "manager side: connect_* of the manager",
    "connect_hb": "manager side: connect_* of the manager",
    "connect_iopub": "manager side: connect_* of the manager",
    "connect_shell": "manager side: connect_* of the manager",
    "connect_stdin": "manager side: connect_* of the manager",
    "control_port": "in connection_info",
    "hb_port": "in connection_info",
    "iopub_port": "in connection_info",
    "shell_port": "in connection_info",
    "stdin_port": "in connection_info",
    "ports": "in connection_info",
    "curve_publickey": "in connection_info",
    "curve_secretkey": "in connection_info",
    "write_connection_file": "the manager writes it at start",
    "external_connection_dir": "kernels found in another directory are attached by file",
    "kernel_manager_class": "kernel_manager_class is a constructor argument (factory=)",
    "kernel_manager_factory": "a traitlets factory: factory=",
    "shared_context": "each manager has its own context",
    "update_env": "manager side",
}


def _missing(theirs: type, ours: Any) -> set[str]:
    public = {n for n in dir(theirs) if not n.startswith("_")}
    return public - TRAITLETS - {n for n in dir(ours) if not n.startswith("_")}


@pytest.mark.parametrize(
    "theirs,key",
    [
        (jupyter_client.BlockingKernelClient, "BlockingKernelClient"),
        (jupyter_client.AsyncKernelClient, "BlockingKernelClient"),
    ],
)
def test_client_has_jupyter_clients_public_names(
    theirs: type, key: str, faces: dict[str, tuple[Any, Any]]
) -> None:
    async_obj, blocking_obj = faces[key]
    for ours in (async_obj, blocking_obj):
        missing = _missing(theirs, ours)
        # Both ways: the list of deliberate differences stays exact.
        assert missing == set(CLIENT_DIFFERENCES), (type(ours), sorted(missing))


@pytest.mark.parametrize(
    "theirs,key",
    [
        (jupyter_client.KernelManager, "KernelManager"),
        (jupyter_client.AsyncKernelManager, "KernelManager"),
        (jupyter_client.MultiKernelManager, "MultiKernelManager"),
        (jupyter_client.AsyncMultiKernelManager, "MultiKernelManager"),
    ],
)
def test_managers_have_jupyter_clients_public_names(
    theirs: type, key: str, faces: dict[str, tuple[Any, Any]]
) -> None:
    for ours in faces[key]:
        missing = _missing(theirs, ours)
        assert missing <= set(MANAGER_DIFFERENCES), (type(ours), sorted(missing))


# -- the portal -----------------------------------------------------------------------------


def test_an_injected_portal_is_used_and_a_stopped_one_fails_at_once() -> None:
    portal = LoopThread(name="test-portal")
    try:
        kc = kk.BlockingKernelClient(portal=portal)
        assert kc._portal is portal and kc.shell_channel._portal is portal
        assert kc.channels_running is False
        on: list[bool] = []

        def where() -> None:
            on.append(portal.on_loop_thread())

        face.call_on(portal, where, (), {})
        assert on == [True]
    finally:
        portal.close()
    assert not portal.thread.is_alive()
    with pytest.raises(kk.KernelError, match="has stopped"):
        kc.get_connection_info()


def test_a_portal_can_wrap_a_loop_the_application_runs() -> None:
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        portal = LoopThread.attach(loop, thread)
        km = kk.KernelManager(portal=portal)
        assert km.async_manager is not None and km._portal is portal
        assert km.is_alive() is False  # run on the application's loop
        portal.close()  # not ours: left running
        assert thread.is_alive()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

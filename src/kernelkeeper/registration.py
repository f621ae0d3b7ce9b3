"""How a launch learns that its kernel has bound its sockets.

* The launcher's **report**: ipykernels started through
  ``_ipykernel_launcher.py`` send their bound ports to a registration socket,
  signed with the kernel's key (:class:`Registrar`). Kernels on other
  machines (``_remote_launcher.py``) report the same way, to a registrar
  bound on an address their nodes can reach, adding the address they bound.
* The kernel's **listening sockets**: for kernels on pre-assigned ports that
  cannot report (not ipykernel, or a wrapper cleared the environment),
  :class:`BindProbe` looks for listeners on the five ports held by the kernel's
  process tree (``/proc``, Linux), or the ipc socket files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import stat
import time
from typing import Any

import zmq
import zmq.asyncio

from .connection import ConnectionInfo

__all__ = ["BindProbe", "Registrar"]

log = logging.getLogger("kernelkeeper.launch")


class Registrar:
    """One PULL socket per event loop and bind address collecting kernels' port reports.

    It exists only while some launch waits on it: the first waiter opens it,
    the last one to leave closes the socket and awaits its receive task.

    Local kernels report to one on ``127.0.0.1``. Kernels on other machines
    need one the nodes can reach: ``Registrar.get("0.0.0.0")`` (or a given
    interface's address) binds there, and :meth:`url_for` names it as a node
    should connect to it. Reports are only accepted signed with the kernel's
    key, so a socket open to the network takes no forged ports; a registrar
    that is not on loopback refuses to wait for an unsigned report at all.
    """

    _by_loop: dict[tuple[asyncio.AbstractEventLoop, str], Registrar] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, address: str = "127.0.0.1") -> None:
        self.loop = loop
        self.address = address
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.linger = 0
        # A report is a few hundred bytes; anyone who can reach a socket open to
        # the network must not make us buffer more.
        self.sock.maxmsgsize = 64 * 1024
        if ":" in address:
            self.sock.ipv6 = True
        host = f"[{address}]" if ":" in address else address
        #: The port the socket is bound to.
        self.port: int = self.sock.bind_to_random_port(f"tcp://{host}")
        self.url = f"tcp://{host}:{self.port}"
        self.waiters: dict[str, tuple[bytes, asyncio.Future[dict[str, Any]]]] = {}
        self.task = loop.create_task(self._receive())

    @classmethod
    def get(cls, address: str = "127.0.0.1") -> Registrar:
        """The running loop's registrar bound on ``address`` (opened on first use)."""
        loop = asyncio.get_running_loop()
        reg = cls._by_loop.get((loop, address))
        if reg is None:
            reg = cls._by_loop[(loop, address)] = cls(loop, address)
        return reg

    @property
    def loopback(self) -> bool:
        """Is the socket reachable from this host only?"""
        return self.address in ("127.0.0.1", "::1", "localhost")

    def url_for(self, host: str | None = None) -> str:
        """The URL a kernel connects to, on a host that reaches us as ``host``.

        Without ``host``, the bound address (a wildcard bind needs a host).
        """
        if host is None:
            if self.address in ("0.0.0.0", "::", "*"):
                raise ValueError("a registrar bound on a wildcard address needs a host name")
            return self.url
        return f"tcp://{f'[{host}]' if ':' in host else host}:{self.port}"

    def expect(self, token: str, key: bytes) -> asyncio.Future[dict[str, Any]]:
        """A future for the report carrying ``token``, signed with ``key``."""
        if not key and not self.loopback:
            raise ValueError("a registrar open to the network takes signed reports only")
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.waiters[token] = (key, fut)
        return fut

    async def release(self, token: str) -> None:
        """Stop waiting for ``token``; the last waiter closes the socket."""
        self.waiters.pop(token, None)
        where = (self.loop, self.address)
        if self.waiters or self._by_loop.get(where) is not self:
            return
        del self._by_loop[where]
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.sock.close()

    async def _receive(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            try:
                body, sig = frames
                report = json.loads(body)
                key, fut = self.waiters[report["token"]]
            except (ValueError, KeyError, TypeError):
                log.warning("Dropped a malformed or unexpected kernel registration")
                continue
            expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode() if key else b""
            if not hmac.compare_digest(expected, sig):
                log.warning("Dropped a kernel registration with a bad signature")
                continue
            if not fut.done():
                fut.set_result(report)


_TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
_LISTEN = "0A"
# Reading /proc/net/tcp walks the kernel's whole socket hash table (milliseconds on
# a large machine, however few sockets there are), so all probes of this process
# share one recent read when they only look for listeners that are not the kernel's.
_SHARED_MAX_AGE = 0.5
_shared: tuple[float, dict[int, set[int]]] | None = None


def _listeners() -> dict[int, set[int]]:
    """``{port: {socket inode, ...}}`` of every listening TCP socket (v4 and v6)."""
    out: dict[int, set[int]] = {}
    for table in _TCP_TABLES:
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            out.setdefault(port, set()).add(int(fields[9]))
    return out


def _shared_listeners() -> dict[int, set[int]]:
    global _shared
    now = time.monotonic()
    if _shared is None or now - _shared[0] > _SHARED_MAX_AGE:
        _shared = (now, _listeners())
    return _shared[1]


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


class BindProbe:
    """Has the kernel started at ``pid`` bound the five ports of ``info``?

    Polled a few dozen times a second while a pre-assigned kernel starts, so
    each call is cheap: the kernel process's own socket fds every time, its
    descendants (a wrapper that runs the kernel as a child) every fifth call,
    and the TCP tables only once the tree holds enough sockets to be done (and
    holds new ones since the last look, or 0.2 s have passed).
    """

    DESCENDANTS_EVERY = 5
    REREAD_AFTER = 0.2
    #: All five ports listening, none of them by the kernel's tree, for this long:
    #: something else forwards them (``docker run -p``); count that as bound.
    FOREIGN_STEADY = 1.0
    #: Some ports listening in the kernel's tree and the others by someone else,
    #: for this long: those were taken between our pick and the kernel's bind.
    #: Not every kernel exits then: ipykernel runs on without a heartbeat port
    #: (its heartbeat thread ends), and nothing would ever say so.
    COLLISION_STEADY = 1.0

    def __init__(self, pid: int, info: ConnectionInfo) -> None:
        self.pid = pid
        self.info = info
        self.ports = set(info.ports.values())
        self._calls = 0
        self._descendants: list[int] = []
        self._foreign_since: float | None = None
        self._collision_since: float | None = None
        #: The ports that others took, once a collision is steady (else empty).
        self.taken: list[int] = []
        self._seen: set[int] = set()
        self._read_at = 0.0

    @staticmethod
    def supported(info: ConnectionInfo) -> bool:
        """Can this platform see the kernel's sockets?"""
        return info.transport == "ipc" or os.path.exists(_TCP_TABLES[0])

    def __call__(self) -> bool:
        if self.info.transport == "ipc":
            # Sockets, not files: the ports were reserved with empty files,
            # which the kernel's bind replaces.
            return all(_is_socket(p) for p in self.info.ipc_paths())
        if self._calls % self.DESCENDANTS_EVERY == 0:
            # Imported here: only kernels that cannot report are probed, and psutil
            # costs ~1 MiB resident in every manager process otherwise.
            import psutil

            try:
                self._descendants = [
                    p.pid for p in psutil.Process(self.pid).children(recursive=True)
                ]
            except psutil.Error:
                self._descendants = []
        self._calls += 1
        ours: set[int] = set()
        for pid in (self.pid, *self._descendants):
            ours |= _socket_inodes(pid)
        now = time.monotonic()
        # Read the tables when the tree has opened new sockets, else only now and
        # then: a kernel may hold other sockets long before it binds its ports.
        if len(ours) >= len(self.ports) and (
            ours != self._seen or now - self._read_at >= self.REREAD_AFTER
        ):
            self._seen, self._read_at = ours, now
            table = _listeners()
            if all(table.get(port, set()) & ours for port in self.ports):
                return True
        return self._forwarded(ours)

    def _forwarded(self, ours: set[int]) -> bool:
        table = _shared_listeners()
        held = [table.get(port, set()) for port in self.ports]
        self._check_collision(held, ours)
        # Some listeners ours and some not is a collision (the kernel exits with
        # EADDRINUSE, or runs on without that port: see ``taken``); only a
        # complete set held by others counts as forwarded.
        if not all(held) or any(inodes & ours for inodes in held):
            self._foreign_since = None
            return False
        now = time.monotonic()
        if self._foreign_since is None:
            self._foreign_since = now
        return now - self._foreign_since >= self.FOREIGN_STEADY

    def _check_collision(self, held: list[set[int]], ours: set[int]) -> None:
        mine = [bool(inodes & ours) for inodes in held]
        if all(held) and any(mine) and not all(mine):
            now = time.monotonic()
            if self._collision_since is None:
                self._collision_since = now
            if now - self._collision_since >= self.COLLISION_STEADY:
                ports = list(self.ports)
                self.taken = sorted(p for p, m in zip(ports, mine, strict=True) if not m)
        else:
            self._collision_since = None
            self.taken = []


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False

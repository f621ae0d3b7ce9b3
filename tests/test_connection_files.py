"""Connection files and the runtime dir: bad input gets a typed error naming the
file and the field; a live kernel's file is never overwritten; keys stay 0600
and out of every message.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import BlockingKernelClient as JCBlockingKernelClient

import kernelkeeper as kk
from kernelkeeper import connection as conn
from kernelkeeper.connection import ConnectionInfo, new_key, write_connection_file
from kernelkeeper.errors import ConnectionFileError, KernelError, RuntimeDirError
from privdrop import open_dir, run_as_unprivileged

__all__ = ["open_dir"]  # a fixture, used by name

READY = 60.0  # generous: 2 cores shared with other suites
SECRET = "d0d0cafe" * 8  # a key value that must never show up in a message
PUBLIC = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # a valid Z85 key (40 chars)
STANDARD_KEYS = {
    "transport",
    "ip",
    "shell_port",
    "iopub_port",
    "stdin_port",
    "control_port",
    "hb_port",
    "key",
    "signature_scheme",
}


@pytest.fixture
def held_ports() -> Iterator[dict[str, int]]:
    """Five ports bound but not listening: a connect is refused, so a file naming
    them is one whose kernel is gone."""
    socks = [socket.socket() for _ in range(5)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        yield {f"{ch}_port": s.getsockname()[1] for ch, s in zip(conn.CHANNELS, socks, strict=True)}
    finally:
        for s in socks:
            s.close()


def good_dict(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "transport": "tcp",
        "ip": "127.0.0.1",
        "shell_port": 50001,
        "iopub_port": 50002,
        "stdin_port": 50003,
        "control_port": 50004,
        "hb_port": 50005,
        "key": SECRET,
        "signature_scheme": "hmac-sha256",
        "kernel_name": "python3",
    }
    d.update(changes)
    return {k: v for k, v in d.items() if v is not _DROP}


_DROP = object()


def write_raw(path: Path, content: Any) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    path.chmod(0o600)
    return path


# --- connection info and files (moved from test_session.py) ---------------------------------


def _info(**kw: Any) -> ConnectionInfo:
    base: dict[str, Any] = dict(
        shell_port=50001,
        iopub_port=50002,
        stdin_port=50003,
        control_port=50004,
        hb_port=50005,
        key=new_key(),
        kernel_name="python3",
    )
    base.update(kw)
    return ConnectionInfo(**base)


def test_new_key() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    for k in keys:
        assert isinstance(k, bytes) and len(k) == 64
        int(k, 16)  # hex
        assert k == k.lower()


def test_write_connection_file_mode_and_keys(tmp_path: Path) -> None:
    info = _info()
    old = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        path = write_connection_file(info, tmp_path / "sub" / "kernel-x.json")
    finally:
        os.umask(old)
    st_ = os.stat(path)
    assert stat.S_IMODE(st_.st_mode) == 0o600
    with open(path) as f:
        data = json.load(f)
    assert STANDARD_KEYS <= set(data)
    assert data["key"] == info.key.decode()
    assert data["shell_port"] == 50001 and data["transport"] == "tcp"
    assert os.listdir(tmp_path / "sub") == ["kernel-x.json"]  # no temp file left
    # jupyter_client reads it.
    jc = JCBlockingKernelClient()
    jc.load_connection_file(path)
    assert jc.session.key == info.key
    assert (jc.shell_port, jc.iopub_port, jc.stdin_port, jc.control_port, jc.hb_port) == (
        50001,
        50002,
        50003,
        50004,
        50005,
    )
    assert jc.transport == "tcp" and jc.ip == "127.0.0.1"
    assert jc.session.signature_scheme == "hmac-sha256"


def test_write_connection_file_replaces_atomically(
    tmp_path: Path, held_ports: dict[str, int]
) -> None:
    path = tmp_path / "kernel-a.json"
    write_connection_file(_info(**held_ports), path)
    stop = threading.Event()
    bad: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                text = path.read_text()
                data = json.loads(text)
                if not STANDARD_KEYS <= set(data) or stat.S_IMODE(path.stat().st_mode) != 0o600:
                    bad.append(text)
            except json.JSONDecodeError as e:  # half a file
                bad.append(repr(e))
            reads += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(300):
            write_connection_file(_info(kernel_name="k" * (i % 50), **held_ports), path)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    assert reads > 0
    assert bad == []
    assert sorted(os.listdir(tmp_path)) == ["kernel-a.json"]


def test_write_connection_file_failure_leaves_old_file(
    tmp_path: Path, held_ports: dict[str, int]
) -> None:
    path = tmp_path / "kernel-b.json"
    good = _info(**held_ports)
    write_connection_file(good, path)
    before = path.read_text()
    with pytest.raises(ConnectionFileError) as info:
        # key not ASCII: to_dict fails, and says so without showing the key
        write_connection_file(_info(key=b"\xffsecret\xfe", **held_ports), path)
    assert info.value.field == "key"
    assert "secret" not in str(info.value) and "xff" not in str(info.value)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["kernel-b.json"]


def test_connection_info_url() -> None:
    info = _info()
    assert info.url("shell") == "tcp://127.0.0.1:50001"
    assert info.url("hb") == "tcp://127.0.0.1:50005"
    assert _info(ip="::1").url("iopub") == "tcp://[::1]:50002"
    ipc = _info(transport="ipc", ip="/tmp/kernel-abc-ipc")
    assert ipc.url("control") == "ipc:///tmp/kernel-abc-ipc-50004"
    assert ipc.ipc_paths() == [f"/tmp/kernel-abc-ipc-{p}" for p in range(50001, 50006)]
    assert info.ipc_paths() == []
    assert info.has_ports and not ConnectionInfo().has_ports
    assert info.ports == {
        "shell": 50001,
        "iopub": 50002,
        "stdin": 50003,
        "control": 50004,
        "hb": 50005,
    }
    with pytest.raises(KernelError):
        ConnectionInfo(transport="udp")
    with pytest.raises(ConnectionFileError) as err:
        ConnectionInfo(transport="udp")
    assert err.value.field == "transport"


def test_from_file_to_dict_round_trip(tmp_path: Path) -> None:
    info = _info(signature_scheme="hmac-sha512", transport="ipc", ip=str(tmp_path / "k"))
    path = write_connection_file(info, tmp_path / "kernel-c.json")
    back = ConnectionInfo.from_file(path)
    assert back == info
    assert back.to_dict() == info.to_dict()
    assert isinstance(back.key, bytes)
    d = info.to_dict()
    assert isinstance(d["key"], str)
    assert json.loads(json.dumps(d)) == d
    # Files written by others: string ports, str key, extra keys.
    d2 = {**d, "shell_port": "50001", "jupyter_session": "x", "extra": 1}
    assert ConnectionInfo.from_dict(d2) == info
    assert ConnectionInfo(key="abc").key == b"abc"  # type: ignore[arg-type]


def test_key_never_in_repr() -> None:
    info = _info()
    assert info.key.decode() not in repr(info)
    assert info.key.decode() not in str(info)
    assert "key" not in repr(info)
    assert info.key.decode() not in repr(info.replace(ip="10.0.0.1"))


def test_allocate_ports_and_ipc_ports(tmp_path: Path) -> None:
    ports = conn.allocate_ports()
    assert len(ports) == len(set(ports)) == 5 and all(p > 0 for p in ports)
    prefix = str(tmp_path / "kernel-ipc")
    (tmp_path / "kernel-ipc-1").touch()
    (tmp_path / "kernel-ipc-3").touch()
    assert conn.allocate_ipc_ports(prefix) == [2, 4, 5, 6, 7]
    # Reserved: each is an empty 0600 file now, so the next caller (another
    # process, at the same moment) gets other ports.
    for n in (2, 4, 5, 6, 7):
        st = (tmp_path / f"kernel-ipc-{n}").stat()
        assert st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0o600
    assert conn.allocate_ipc_ports(prefix, 2) == [8, 9]


# --- the runtime dir ---------------------------------------------------------------------------


def test_runtime_dir_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "rt"
    target.write_text("")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(target))
    for call in (conn.runtime_dir, lambda: kk.AsyncKernelManager().connection_file):
        with pytest.raises(RuntimeDirError) as info:
            call()
        assert isinstance(info.value, OSError) and isinstance(info.value, KernelError)
        assert info.value.path == str(target)
        assert str(target) in str(info.value)
        assert "JUPYTER_RUNTIME_DIR" in str(info.value)


def test_runtime_dir_under_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("")
    target = tmp_path / "afile" / "runtime"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(target))
    with pytest.raises(RuntimeDirError) as info:
        conn.runtime_dir()
    assert str(target) in str(info.value) and "JUPYTER_RUNTIME_DIR" in str(info.value)
    assert "not a directory" in str(info.value)


def test_runtime_dir_unwritable(open_dir: Path) -> None:
    locked = open_dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)  # exists, cannot be written
    under = open_dir / "ro" / "runtime"
    under.parent.mkdir()
    under.parent.chmod(0o555)  # cannot be created
    code = (
        "out['errors'] = {}\n"
        f"for path in {[str(locked), str(under)]!r}:\n"
        "    os.environ['JUPYTER_RUNTIME_DIR'] = path\n"
        "    try:\n"
        "        conn.runtime_dir()\n"
        "        out['errors'][path] = None\n"
        "    except OSError as e:\n"
        "        out['errors'][path] = [type(e).__name__, e.path, str(e)]\n"
    )
    out = run_as_unprivileged(code, {})
    for path in (str(locked), str(under)):
        kind, err_path, text = out["errors"][path]
        assert kind == "RuntimeDirError"
        assert err_path == path and path in text
        assert "JUPYTER_RUNTIME_DIR" in text
    assert "not writable" in out["errors"][str(locked)][2]


# --- reading connection files --------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "field", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"\xff\xfe{}", None, "not UTF-8"),
        ([1, 2], None, "JSON object"),
        ("a string", None, "JSON object"),
        (good_dict(shell_port=_DROP), "shell_port", "no 'shell_port'"),
        (good_dict(hb_port=_DROP), "hb_port", "no 'hb_port'"),
        (good_dict(ip=_DROP), "ip", "no 'ip'"),
        (good_dict(transport=_DROP), "transport", "no 'transport'"),
        (good_dict(key=_DROP), "key", "no 'key'"),
        (good_dict(shell_port=0), "shell_port", "1 to 65535"),  # a file needs real ports
        (good_dict(iopub_port=65536), "iopub_port", "65535"),
        (good_dict(stdin_port=-1), "stdin_port", "65535"),
        (good_dict(control_port="http"), "control_port", "port number"),
        (good_dict(control_port=1.5), "control_port", "port number"),
        (good_dict(hb_port=True), "hb_port", "port number"),
        (good_dict(hb_port=None), "hb_port", "port number"),
        (good_dict(transport="udp"), "transport", "'tcp' or 'ipc'"),
        (good_dict(transport=["tcp"]), "transport", "'tcp' or 'ipc'"),
        (good_dict(ip=""), "ip", "non-empty"),
        (good_dict(ip=7), "ip", "non-empty"),
        (good_dict(key=12345), "key", "must be a string"),
        (good_dict(key=[SECRET]), "key", "must be a string"),
        (good_dict(key=SECRET + "\u00e9"), "key", "ASCII"),
        (good_dict(signature_scheme="rot13"), "signature_scheme", "hmac-"),
        (good_dict(kernel_name=3), "kernel_name", "string"),
        (
            good_dict(curve_publickey=PUBLIC, curve_secretkey=SECRET[:39]),
            "curve_secretkey",
            "40-character Z85",
        ),
        (
            good_dict(curve_publickey=PUBLIC[:-1] + "~", curve_secretkey=PUBLIC),
            "curve_publickey",
            "Z85",
        ),
        (good_dict(curve_publickey=PUBLIC), "curve_secretkey", "missing"),
        (good_dict(curve_secretkey=7, curve_publickey=PUBLIC), "curve_secretkey", "string"),
    ],
)
def test_bad_connection_file(
    tmp_path: Path, content: Any, field: str | None, fragment: str
) -> None:
    path = write_raw(tmp_path / "kernel-bad.json", content)
    with pytest.raises(ConnectionFileError) as info:
        ConnectionInfo.from_file(path)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, KernelError)
    assert err.path == str(path)
    assert str(path) in str(err)
    assert err.field == field
    assert fragment in str(err)
    assert SECRET not in str(err) and SECRET[:39] not in str(err)  # keys never shown
    # The same content as a dict (when it is one) is refused by from_dict too,
    # except for port 0, which from_dict allows (a not-yet-bound kernel).
    if isinstance(content, dict) and content.get("shell_port") != 0:
        with pytest.raises(ConnectionFileError) as info2:
            ConnectionInfo.from_dict(content)
        assert info2.value.field == field
        assert SECRET not in str(info2.value)


def test_from_dict_allows_unbound_ports_and_bytes_key() -> None:
    info = ConnectionInfo.from_dict(
        good_dict(shell_port=0, iopub_port=0, stdin_port=0, control_port=0, hb_port=0)
    )
    assert not info.has_ports
    # jupyter_client's get_connection_info() gives the key as bytes.
    assert ConnectionInfo.from_dict(good_dict(key=SECRET.encode())).key == SECRET.encode()
    both = ConnectionInfo.from_dict(good_dict(curve_publickey=PUBLIC, curve_secretkey=PUBLIC))
    assert both.encrypted and both.curve_secretkey == PUBLIC.encode()
    assert ConnectionInfo.from_dict(good_dict(curve_publickey=None)).encrypted is False


def test_unusable_connection_file_kinds(tmp_path: Path) -> None:
    missing = tmp_path / "kernel-missing.json"
    fifo = tmp_path / "kernel-fifo.json"
    os.mkfifo(fifo)  # a plain open() would block forever here
    directory = tmp_path / "kernel-dir.json"
    directory.mkdir()
    for path, fragment in (
        (missing, "No such file"),
        (fifo, "not a regular file"),
        (directory, "not a regular file"),
    ):
        with pytest.raises(ConnectionFileError, match=fragment) as info:
            ConnectionInfo.from_file(path)
        assert info.value.path == str(path)
    with pytest.raises(ConnectionFileError):  # what a client given the path sees
        kk.AsyncKernelClient(str(missing))


def test_wide_connection_file_is_warned_about_on_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_raw(tmp_path / "kernel-wide.json", good_dict())
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="kernelkeeper.connection"):
        info = ConnectionInfo.from_file(path)
    assert info.key == SECRET.encode()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0]
    assert SECRET not in caplog.text
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="kernelkeeper.connection"):
        ConnectionInfo.from_file(path)
    assert not caplog.records


# --- writing connection files ---------------------------------------------------------------


def test_write_refuses_when_the_filesystem_keeps_it_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_ports: dict[str, int]
) -> None:
    """A filesystem where chmod does not give 0600 (vfat, some FUSE/network
    mounts; none can be mounted here) is stood in for by an fchmod that widens."""
    real_fchmod = os.fchmod
    monkeypatch.setattr(os, "fchmod", lambda fd, mode: real_fchmod(fd, 0o644))
    path = tmp_path / "kernel-x.json"
    info = ConnectionInfo(key=SECRET.encode(), **held_ports)
    with pytest.raises(ConnectionFileError) as err:
        write_connection_file(info, path)
    assert err.value.path == str(path) and err.value.field == "mode"
    assert "JUPYTER_RUNTIME_DIR" in str(err.value) and SECRET not in str(err.value)
    assert os.listdir(tmp_path) == []  # neither the file nor its temporary twin


def test_stale_connection_file_is_overwritten(tmp_path: Path, held_ports: dict[str, int]) -> None:
    path = tmp_path / "kernel-stale.json"
    write_connection_file(ConnectionInfo(key=new_key(), **held_ports), path)
    fresh = ConnectionInfo(key=new_key(), **held_ports)
    write_connection_file(fresh, path)
    assert ConnectionInfo.from_file(path) == fresh
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Garbage where the file was is nobody's: replaced too.
    path.write_text("{garbage")
    write_connection_file(fresh, path)
    assert ConnectionInfo.from_file(path) == fresh


def test_live_kernels_connection_file_is_not_overwritten(held_ports: dict[str, int]) -> None:
    km, kc = kk.start_new_kernel(startup_timeout=READY)
    km2 = None
    try:
        cf = km.connection_file
        before = Path(cf).read_bytes()
        with pytest.raises(ConnectionFileError) as info:
            write_connection_file(ConnectionInfo(key=new_key(), **held_ports), cf)
        assert info.value.path == cf and "running kernel" in str(info.value)
        assert km.connection_info.key.decode() not in str(info.value)

        km2 = kk.KernelManager(connection_file=cf)
        with pytest.raises(ConnectionFileError) as info:
            km2.start_kernel(startup_timeout=READY)
        assert info.value.path == cf
        assert not km2.has_kernel

        assert Path(cf).read_bytes() == before  # same ports, same key
        kc.wait_for_ready(timeout=READY)  # the first kernel still answers
        assert km.is_alive()
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
        if km2 is not None:
            km2.shutdown_kernel()
    assert not os.path.exists(cf)


def test_live_ipc_kernels_connection_file_is_not_overwritten(held_ports: dict[str, int]) -> None:
    km, kc = kk.start_new_kernel(startup_timeout=READY, transport="ipc")
    try:
        assert km.connection_info.transport == "ipc"
        cf = km.connection_file
        before = Path(cf).read_bytes()
        with pytest.raises(ConnectionFileError, match="running kernel"):
            write_connection_file(ConnectionInfo(key=new_key(), **held_ports), cf)
        assert Path(cf).read_bytes() == before
        kc.wait_for_ready(timeout=READY)
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    assert not os.path.exists(cf)
    # Its sockets are gone with it, so the same file name is free again.
    assert not conn.kernel_listens(cf)

"""CurveZMQ transport encryption, end to end with real kernels.

Encrypted kernels carry a Curve keypair in their connection file (the fields
jupyter_client 8.10 and ipykernel 7.4 use). Our clients and jupyter_client's
talk to them either way round; a socket that does not know the kernel's
public key gets no output at all, where on an unencrypted kernel it reads
every message in clear (the control case that shows the test can fail).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jupyter_client
import pytest
import zmq

import kernelkeeper as kk
from kernelkeeper import ConfigurationError, ConnectionInfo, KernelManager, KernelSpec

pytestmark = pytest.mark.timeout(90)

READY = 30.0
TIMEOUT = 15.0

ENCRYPTABLE = KernelSpec(
    argv=(sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"),
    display_name="curve-capable ipykernel",
    language="python",
    metadata={"supported_encryption": ["curve"]},
    name="curvy",
)
PLAIN = KernelSpec(
    argv=ENCRYPTABLE.argv, display_name="no curve declared", language="python", name="plain"
)


@pytest.fixture
def encrypted() -> Iterator[KernelManager]:
    km = KernelManager(kernel_spec=ENCRYPTABLE, transport_encryption="required")
    km.start_kernel(startup_timeout=READY)
    try:
        yield km
    finally:
        km.shutdown_kernel(now=True)


def _eavesdrop(info: ConnectionInfo) -> zmq.Socket[bytes]:
    """A SUB socket on the kernel's iopub that knows nothing but the address."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.linger = 0
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(info.url("iopub"))
    return sock


def _heard(sock: zmq.Socket[bytes], marker: bytes, until: float) -> bool:
    while time.monotonic() < until:
        if sock.poll(50):
            if any(marker in f for f in sock.recv_multipart()):
                return True
    return False


def test_connection_file_carries_the_keypair(encrypted: KernelManager) -> None:
    with open(encrypted.connection_file, encoding="utf-8") as f:
        on_disk = json.load(f)
    assert len(on_disk["curve_publickey"]) == 40
    assert len(on_disk["curve_secretkey"]) == 40
    assert oct(os.stat(encrypted.connection_file).st_mode & 0o777) == "0o600"
    info = encrypted.connection_info
    assert info is not None and info.encrypted
    # The secret half never shows up in reprs.
    assert on_disk["curve_secretkey"] not in repr(info)
    assert on_disk["curve_secretkey"] not in repr(encrypted)


@pytest.mark.parametrize("encrypt", [True, False])
def test_eavesdropper_reads_nothing_of_an_encrypted_kernel(encrypt: bool) -> None:
    policy = "required" if encrypt else "disabled"
    km = KernelManager(kernel_spec=ENCRYPTABLE, transport_encryption=policy)
    km.start_kernel(startup_timeout=READY)
    kc = km.client()
    spy = None
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=READY)
        assert km.connection_info is not None
        spy = _eavesdrop(km.connection_info)
        # Keep printing until our own client has seen output for a while:
        # the spy's subscription has then had every chance to take effect.
        seen_by_spy = False
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not seen_by_spy:
            result = kc.run_cell("print('secret-' + 'marker')", timeout=TIMEOUT)
            assert result.stdout == "secret-marker\n"
            seen_by_spy = _heard(spy, b"secret-marker", time.monotonic() + 0.2)
        assert seen_by_spy is (not encrypt)
    finally:
        if spy is not None:
            spy.close()
        kc.stop_channels()
        km.shutdown_kernel()


def test_jupyter_client_talks_to_our_encrypted_kernel(encrypted: KernelManager) -> None:
    jc = jupyter_client.BlockingKernelClient()
    jc.load_connection_file(encrypted.connection_file)
    assert jc.curve_publickey is not None
    jc.start_channels()
    try:
        jc.wait_for_ready(timeout=READY)
        out: list[str] = []

        def hook(msg: dict[str, object]) -> None:
            content = msg["content"]
            if msg["msg_type"] == "stream" and isinstance(content, dict):
                out.append(str(content["text"]))

        reply = jc.execute_interactive("print(6 * 7)", output_hook=hook, timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok"
        assert "".join(out) == "42\n"
    finally:
        jc.stop_channels()


def test_our_client_talks_to_jupyter_clients_encrypted_kernel() -> None:
    jkm = jupyter_client.KernelManager(kernel_name="python3")
    jkm.start_kernel(transport_encryption="required")
    try:
        with open(jkm.connection_file, encoding="utf-8") as f:
            assert "curve_publickey" in json.load(f)
        kc = kk.BlockingKernelClient(jkm.connection_file)
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=READY)
            assert kc.run_cell("print('hi')", timeout=TIMEOUT).stdout == "hi\n"
        finally:
            kc.stop_channels()
    finally:
        jkm.shutdown_kernel(now=True)


def test_encryption_survives_a_restart(encrypted: KernelManager) -> None:
    before = encrypted.connection_info
    encrypted.restart_kernel(now=True)
    assert encrypted.connection_info is not None and before is not None
    assert encrypted.connection_info.curve_publickey == before.curve_publickey
    kc = encrypted.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=READY)
        assert kc.run_cell("1 + 1", timeout=TIMEOUT).result() == {"text/plain": "2"}
    finally:
        kc.stop_channels()


def test_auto_leaves_kernels_without_declared_support_alone() -> None:
    km = KernelManager(kernel_spec=PLAIN, transport_encryption="auto")
    km.start_kernel(startup_timeout=READY)
    try:
        assert km.connection_info is not None and not km.connection_info.encrypted
    finally:
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize(
    ("spec", "transport"), [(PLAIN, "tcp"), (ENCRYPTABLE, "ipc")], ids=["undeclared", "ipc"]
)
def test_required_refuses_what_cannot_be_encrypted(
    spec: KernelSpec, transport: str, isolated_runtime: Path
) -> None:
    km = KernelManager(kernel_spec=spec, transport=transport, transport_encryption="required")
    with pytest.raises(ConfigurationError):
        km.start_kernel(startup_timeout=READY)
    assert not km.has_kernel
    assert not [p for p in isolated_runtime.iterdir() if p.name.startswith("kernel-")]


def test_unknown_policy_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        KernelManager(transport_encryption="sometimes")


def test_command_line_encrypts_and_so_has_no_plain_text_warning(isolated_runtime: Path) -> None:
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(isolated_runtime)}
    done = subprocess.run(
        [sys.executable, "-m", "kernelkeeper", "run", "-c", "print('hello')"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello\n"
    assert "without encryption" not in done.stderr

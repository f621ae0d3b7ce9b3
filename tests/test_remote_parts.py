"""The parts of remote kernels that need no cluster: the registration socket
open to the network, the options file, the node's settings."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from kernelkeeper.connection import ConnectionInfo
from kernelkeeper.errors import ConfigurationError
from kernelkeeper.finder import IPykernelProvider
from kernelkeeper.registration import Registrar
from kernelkeeper.remote import node_settings, reported_info
from kernelkeeper.remote_config import CONFIG_NAME, load_config, slurm_options, ssh_options


async def _push(url: str, body: bytes, sig: bytes) -> None:
    sock = zmq.asyncio.Context.instance().socket(zmq.PUSH)
    sock.linger = 1000
    sock.connect(url)
    await sock.send_multipart([body, sig])
    sock.close()


async def test_network_registrar_takes_only_signed_reports() -> None:
    reg = Registrar.get("0.0.0.0")
    assert reg is Registrar.get("0.0.0.0") and reg is not Registrar.get()
    key = b"secret-key"
    with pytest.raises(ValueError, match="signed reports only"):
        reg.expect("unsigned", b"")
    fut = reg.expect("t1", key)
    url = reg.url_for("127.0.0.1")
    try:
        forged = json.dumps({"token": "t1", "shell_port": 1}).encode()
        await _push(url, forged, hmac.new(b"wrong", forged, hashlib.sha256).hexdigest().encode())
        body = json.dumps({"token": "t1", "shell_port": 2}).encode()
        await _push(url, body, hmac.new(key, body, hashlib.sha256).hexdigest().encode())
        report = await asyncio.wait_for(fut, 30)
        assert report["shell_port"] == 2  # the forged one was dropped
    finally:
        await reg.release("t1")
        await Registrar.get().release("")  # the loopback one made above
    assert Registrar.get("0.0.0.0") is not reg  # the last waiter closed it
    await Registrar.get("0.0.0.0").release("")


def test_options_file_precedence_and_checks(tmp_path: Path) -> None:
    user, system = tmp_path / "user", tmp_path / "system"
    user.mkdir()
    system.mkdir()
    (system / CONFIG_NAME).write_text(
        json.dumps({"slurm": {"partition": "cpu", "cpus": 2}, "ssh": {"user": "ops"}})
    )
    (user / CONFIG_NAME).write_text(
        json.dumps({"slurm": {"partition": "gpu"}, "ssh": {"hosts": {"h1": {"port": 2200}}}})
    )
    cfg = load_config([str(user), str(system)])  # earlier directories win
    opts = slurm_options({"mem": "4G"}, config=cfg)
    assert (opts.partition, opts.cpus, opts.mem) == ("gpu", 2, "4G")
    assert "--partition=gpu" in opts.sbatch_options("python3")
    host = ssh_options("h1", {"tunnel": True}, config=cfg)
    assert (host.hostname, host.user, host.port, host.tunnel) == ("h1", "ops", 2200, True)
    with pytest.raises(ConfigurationError, match="unknown option 'partitoin'"):
        slurm_options({"partitoin": "gpu"}, config={})
    with pytest.raises(ConfigurationError, match="'cpus' must be int"):
        slurm_options({"cpus": "4"}, config={})
    (user / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ConfigurationError, match=CONFIG_NAME):
        load_config([str(user)])


def test_node_settings_carry_the_key_and_the_previous_ports() -> None:
    spec = IPykernelProvider._spec()
    info = ConnectionInfo(key=b"k" * 8, kernel_name="python3")
    previous = info.replace(shell_port=5, iopub_port=6, stdin_port=7, control_port=8, hb_port=9)
    settings = node_settings(
        spec,
        info,
        token="id/nonce",
        register_url="tcp://login:1234",
        kernel_name="python3",
        previous=previous,
        env={"A": "1"},
        extra_arguments=["--matplotlib=inline"],
    )
    assert settings["key"] == "kkkkkkkk" and settings["mode"] == "ipykernel"
    assert settings["argv"] == ["--matplotlib=inline"]  # -f {connection_file} is the node's
    assert settings["ports"]["hb_port"] == 9 and settings["env"]["A"] == "1"
    report = {"ip": "10.0.0.7", **{f"{ch}_port": n for n, ch in enumerate(info.ports, 100)}}
    got = reported_info(info, report)
    assert got.ip == "10.0.0.7" and got.shell_port == 100 and got.key == info.key

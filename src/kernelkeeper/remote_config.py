"""Options for kernels on other machines, from ``kernelkeeper_remote.json``.

The file is looked for in every directory of the Jupyter config path
(``jupyter --paths``: ``~/.jupyter``, ``{sys.prefix}/etc/jupyter``,
``/etc/jupyter``, ``JUPYTER_CONFIG_DIR`` and ``JUPYTER_CONFIG_PATH`` first);
files earlier in the path override later ones, key by key. Options given to a
single start (``remote_options=``) override the file. Example::

    {
      "slurm": {"partition": "gpu", "time": "04:00:00", "cpus": 4, "mem": "16G",
                "gres": "gpu:1", "account": "lab", "sbatch_args": ["--qos=short"],
                "registration_address": "0.0.0.0", "connect_address": "login1.cluster"},
      "ssh": {"user": "me", "key": "~/.ssh/id_ed25519",
              "hosts": {"gpu1": {"hostname": "gpu1.example.org", "port": 2222,
                                 "python": "/opt/conda/bin/python", "tunnel": true}}}
    }

Every key is listed, with its meaning, in :data:`SLURM_KEYS` and
:data:`SSH_KEYS` (and in ``docs/remote.md``). An unknown key or a value of the
wrong type raises :class:`~kernelkeeper.errors.ConfigurationError` naming the
file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

from .errors import ConfigurationError

__all__ = [
    "CONFIG_NAME",
    "SLURM_KEYS",
    "SSH_KEYS",
    "SlurmOptions",
    "SshOptions",
    "load_config",
    "slurm_options",
    "ssh_options",
]

CONFIG_NAME = "kernelkeeper_remote.json"

#: Keys of the ``"slurm"`` section, with their meaning.
SLURM_KEYS: dict[str, str] = {
    "partition": "sbatch --partition (default: the cluster's default partition)",
    "time": "sbatch --time, the job's time limit, e.g. '01:00:00' (default: the partition's)",
    "cpus": "sbatch --cpus-per-task (default 1)",
    "mem": "sbatch --mem, e.g. '4G' (default: the partition's)",
    "gres": "sbatch --gres, e.g. 'gpu:1'",
    "account": "sbatch --account",
    "qos": "sbatch --qos",
    "job_name": "sbatch --job-name (default 'kernelkeeper-<kernel name>')",
    "output": "sbatch --output on the node (default /dev/null: nothing left on disk)",
    "sbatch_args": "more sbatch arguments, a list of strings",
    "python": "the interpreter on the node (default: the kernelspec's, as locally)",
    "registration_address": "local address the registration socket binds (default 0.0.0.0)",
    "connect_address": "address the nodes use to reach it (default: this host's name, "
    "socket.gethostname())",
    "poll_interval": "seconds between scheduler polls of a running job (default 5)",
    "pending_poll_interval": "seconds between polls while the job starts (default 0.5)",
    "heartbeat_interval": "seconds between heartbeats that prompt an early poll (default 1)",
    "node_lost_after": "seconds without a heartbeat after which the node counts as lost: "
    "the job is cancelled and the kernel reported dead (default 30; 0: never)",
    "commands_timeout": "seconds a squeue/scontrol/scancel call may take (default 30)",
}

#: Keys of the ``"ssh"`` section (and of each entry of its ``"hosts"``).
SSH_KEYS: dict[str, str] = {
    "hostname": "the host to connect to (default: the name in ssh/<host>/<spec>)",
    "port": "the SSH port (default 22)",
    "user": "the login (default: the local user)",
    "key": "a private key file (default: asyncssh's defaults and the agent)",
    "known_hosts": "a known_hosts file (default ~/.ssh/known_hosts); null turns the check off",
    "python": "the interpreter on the host (default: the kernelspec's argv[0], or python3)",
    "tunnel": "reach the kernel and the registration socket through the SSH connection",
    "registration_address": "local address the registration socket binds (default 0.0.0.0)",
    "connect_address": "address the host uses to reach it (default: the address of our "
    "end of the SSH connection)",
    "connect_timeout": "seconds to open the SSH connection (default 30)",
    "keepalive_interval": "seconds between SSH keepalives; a dead link is noticed after "
    "three missed (default 5)",
}


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """How kernels are submitted to Slurm (see :data:`SLURM_KEYS`)."""

    partition: str | None = None
    time: str | None = None
    cpus: int = 1
    mem: str | None = None
    gres: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str | None = None
    output: str = "/dev/null"
    sbatch_args: tuple[str, ...] = ()
    python: str | None = None
    registration_address: str = "0.0.0.0"
    connect_address: str | None = None
    poll_interval: float = 5.0
    pending_poll_interval: float = 0.5
    heartbeat_interval: float = 1.0
    node_lost_after: float = 30.0
    commands_timeout: float = 30.0

    def sbatch_options(self, kernel_name: str) -> list[str]:
        """The ``sbatch`` command-line options these settings ask for."""
        out = [
            f"--job-name={self.job_name or 'kernelkeeper-' + kernel_name}",
            f"--output={self.output}",
            f"--cpus-per-task={self.cpus}",
        ]
        for flag, value in (
            ("partition", self.partition),
            ("time", self.time),
            ("mem", self.mem),
            ("gres", self.gres),
            ("account", self.account),
            ("qos", self.qos),
        ):
            if value:
                out.append(f"--{flag}={value}")
        return [*out, *self.sbatch_args]


@dataclasses.dataclass(frozen=True)
class SshOptions:
    """How kernels are started on one SSH host (see :data:`SSH_KEYS`)."""

    hostname: str
    port: int = 22
    user: str | None = None
    key: str | None = None
    known_hosts: str | None = "~/.ssh/known_hosts"
    python: str | None = None
    tunnel: bool = False
    registration_address: str = "0.0.0.0"
    connect_address: str | None = None
    connect_timeout: float = 30.0
    keepalive_interval: float = 5.0


_TYPES: dict[str, tuple[type, ...]] = {
    "cpus": (int,),
    "port": (int,),
    "sbatch_args": (list, tuple),
    "tunnel": (bool,),
    "poll_interval": (int, float),
    "pending_poll_interval": (int, float),
    "heartbeat_interval": (int, float),
    "node_lost_after": (int, float),
    "commands_timeout": (int, float),
    "connect_timeout": (int, float),
    "keepalive_interval": (int, float),
}
_NULLABLE = frozenset({"known_hosts"})


def _config_dirs() -> list[str]:
    from jupyter_core.paths import jupyter_config_path

    return list(jupyter_config_path())


def load_config(dirs: Sequence[str] | None = None) -> dict[str, Any]:
    """The merged ``kernelkeeper_remote.json`` of the Jupyter config path.

    Earlier directories win. A file that cannot be read or parsed raises
    :class:`ConfigurationError` with its path.
    """
    merged: dict[str, Any] = {}
    for d in reversed(list(_config_dirs() if dirs is None else dirs)):
        path = os.path.join(d, CONFIG_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            raise ConfigurationError(f"{path}: cannot read remote kernel options: {e}") from e
        if not isinstance(data, dict):
            raise ConfigurationError(f"{path}: expected a JSON object")
        for section in data:
            if section not in ("slurm", "ssh"):
                raise ConfigurationError(
                    f"{path}: unknown section {section!r} (expected 'slurm' or 'ssh')"
                )
        _merge(merged, data, path)
    return merged


def _merge(into: dict[str, Any], data: Mapping[str, Any], path: str) -> None:
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, path)
        else:
            into[key] = value


def _checked(values: Mapping[str, Any], keys: Mapping[str, str], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in keys:
            raise ConfigurationError(
                f"{where}: unknown option {key!r}; known options: {', '.join(sorted(keys))}"
            )
        if value is None and key not in _NULLABLE:
            continue
        want = _TYPES.get(key, (str,))
        if value is not None and (
            not isinstance(value, want) or (isinstance(value, bool) and bool not in want)
        ):
            names = " or ".join(t.__name__ for t in want)
            raise ConfigurationError(f"{where}: option {key!r} must be {names}, not {value!r}")
        if key == "sbatch_args":
            items: list[Any] = list(cast("Sequence[Any]", value))
            if not all(isinstance(a, str) for a in items):
                raise ConfigurationError(f"{where}: 'sbatch_args' must be a list of strings")
            value = tuple(items)
        if key in ("key", "known_hosts") and isinstance(value, str):
            value = os.path.expanduser(value)
        out[key] = value
    return out


def slurm_options(
    overrides: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None
) -> SlurmOptions:
    """Slurm options: the config file's ``"slurm"`` section, then ``overrides``."""
    cfg = load_config() if config is None else config
    values = _checked(cfg.get("slurm", {}), SLURM_KEYS, CONFIG_NAME + " [slurm]")
    values.update(_checked(overrides or {}, SLURM_KEYS, "remote_options"))
    return SlurmOptions(**values)


def ssh_options(
    host: str,
    overrides: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> SshOptions:
    """Options for ``host``: the ``"ssh"`` section, its ``hosts[host]``, then ``overrides``."""
    cfg = load_config() if config is None else config
    section = dict(cfg.get("ssh", {}))
    hosts = section.pop("hosts", {})
    if not isinstance(hosts, dict):
        raise ConfigurationError(f"{CONFIG_NAME} [ssh]: 'hosts' must be an object")
    values: dict[str, Any] = {"hostname": host}
    values.update(_checked(section, SSH_KEYS, CONFIG_NAME + " [ssh]"))
    values.update(_checked(hosts.get(host, {}), SSH_KEYS, f"{CONFIG_NAME} [ssh.hosts.{host}]"))
    values.update(_checked(overrides or {}, SSH_KEYS, "remote_options"))
    return SshOptions(**values)

"""One start of a kernel on another machine, as the Slurm and SSH providers make it.

:class:`RemoteStart` holds what a start decides before anything runs: the
kernel's id and name, its key (a restart keeps the previous one), its
registration token, the connection file it will have and the CurveZMQ keys
offered. From these come the node's settings, the wait for its report, the
connection info the report completes, and the manager's view of the kernel.
How the node is reached (a batch job, an SSH command) stays with each provider.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from . import connection as _conn
from .connection import ConnectionInfo
from .kernelspec import KernelSpec
from .remote import await_report, curve_keys, new_token, node_settings, reported_info

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ManagerArgs", "NodeOptions", "RemoteStart"]


class NodeOptions(TypedDict, total=False):
    """What a provider adds to a start's node settings (see
    :func:`~kernelkeeper.remote.node_settings`)."""

    env: Mapping[str, str] | None
    cwd: str | os.PathLike[str] | None
    extra_arguments: Sequence[str]
    ip: str | None
    watch_stdin: bool


class ManagerArgs(TypedDict):
    """The arguments :class:`~kernelkeeper.remote.RemoteKernelManager` takes
    about the kernel, from its start and its node's report."""

    kernel_id: str
    pid: int
    hostname: str
    files_to_cleanup: Sequence[str]


@dataclass(frozen=True)
class RemoteStart:
    """What one start of a remote kernel is, before and after its node reports."""

    spec: KernelSpec
    kernel_id: str
    #: The kernel's name (``kernel_name``, else the spec's).
    name: str
    connection_file: str
    #: The connection info before the report: the key, no address or ports yet.
    info: ConnectionInfo
    #: The CurveZMQ keypair offered to the node, or None (never shown by ``repr``).
    keys: tuple[bytes, bytes] | None = field(repr=False)
    token: str
    #: The connection info of the run this one restarts, or None.
    previous: ConnectionInfo | None
    #: ``transport_encryption``.
    policy: str

    @classmethod
    def new(
        cls,
        spec: KernelSpec,
        kernel_id: str | None,
        connection_file: str | None,
        connection_info: ConnectionInfo | None,
        kernel_name: str,
        transport_encryption: str,
    ) -> RemoteStart:
        """A start from the launch arguments of the same names (in their order)."""
        kernel_id = kernel_id or str(uuid.uuid4())
        name = kernel_name or spec.name
        previous = connection_info
        key = previous.key if previous is not None and previous.key else None
        return cls(
            spec=spec,
            kernel_id=kernel_id,
            name=name,
            connection_file=connection_file or _conn.connection_file_path(kernel_id),
            info=ConnectionInfo(key=key or _conn.new_key(), kernel_name=name),
            keys=curve_keys(transport_encryption, spec, previous),
            token=new_token(kernel_id),
            previous=previous,
            policy=transport_encryption,
        )

    def settings(self, register_url: str, **options: Unpack[NodeOptions]) -> dict[str, Any]:
        """The settings the node's launcher reads, as :func:`~kernelkeeper.remote.node_settings`."""
        return node_settings(
            self.spec,
            self.info,
            token=self.token,
            register_url=register_url,
            kernel_name=self.name,
            previous=self.previous,
            keys=self.keys,
            **options,
        )

    async def report(
        self,
        expected: asyncio.Future[dict[str, Any]],
        ended: asyncio.Future[Any],
        *,
        timeout: float,
        why_late: Any,
        why_ended: Any,
    ) -> dict[str, Any]:
        """The node's report, as :func:`~kernelkeeper.remote.await_report`;
        ``ended`` is cancelled on the way out, whatever the outcome."""
        try:
            return await await_report(
                expected,
                ended,
                timeout=timeout,
                name=self.name,
                why_late=why_late,
                why_ended=why_ended,
            )
        finally:
            ended.cancel()

    def reported(self, report: Mapping[str, Any]) -> ConnectionInfo:
        """The connection info with the node's address, ports and (if taken) CurveZMQ keys."""
        return reported_info(self.info, report, keys=self.keys, policy=self.policy)

    def write(self, info: ConnectionInfo) -> None:
        """Write the connection file; a restart may replace the file of its previous run."""
        replace_own = self.previous is not None and self.previous.has_ports
        _conn.write_connection_file(info, self.connection_file, replace_own=replace_own)

    def manager_args(self, report: Mapping[str, Any], hostname: str = "") -> ManagerArgs:
        """The manager's view of the kernel: the pid and host its node reported
        (``hostname`` where it named none), and the connection file to remove."""
        return ManagerArgs(
            kernel_id=self.kernel_id,
            pid=int(report.get("pid", 0)),
            hostname=str(report.get("hostname", hostname)),
            files_to_cleanup=[self.connection_file],
        )

"""CurveZMQ transport encryption for tcp kernels.

The kernel holds a keypair written to its connection file
(``curve_publickey``/``curve_secretkey``, the fields of jupyter_client 8.10
and ipykernel 7.4) and runs every socket as a Curve server. Clients
authenticate the server by its public key; like jupyter_client they use the
connection file's keypair as their own, so no second key has to be handed
out and jupyter_client's clients and ours interoperate with the same kernels.

HMAC signing of every message stays on: Curve protects the bytes on the
network from being read or altered; the HMAC key keeps proving who may talk
to the kernel.
"""

from __future__ import annotations

from typing import Any

import zmq

from .connection import ConnectionInfo
from .errors import KernelStartError

__all__ = ["POLICIES", "available", "configure_client", "new_keypair", "supports_curve"]

#: Accepted values of ``transport_encryption`` (jupyter_client's names).
POLICIES = ("disabled", "auto", "required")


def available() -> bool:
    """Is libzmq built with CurveZMQ (libsodium)?"""
    return bool(zmq.has("curve"))


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh CurveZMQ keypair, ``(public, secret)``, Z85-encoded."""
    if not available():
        raise KernelStartError("CurveZMQ is not available: libzmq was built without libsodium")
    public, secret = zmq.curve_keypair()
    return public, secret


def supports_curve(metadata: Any) -> bool:
    """Does a kernelspec's metadata declare ``supported_encryption: ["curve"]``?"""
    declared = metadata.get("supported_encryption") if hasattr(metadata, "get") else None
    if isinstance(declared, str):
        return declared.strip().lower() == "curve"
    if isinstance(declared, (list, tuple, set, frozenset)):
        return "curve" in {str(x).strip().lower() for x in declared}
    return False


def configure_client(sock: zmq.Socket[Any], info: ConnectionInfo) -> None:
    """Make ``sock`` a Curve client of the kernel in ``info`` (no-op when unencrypted).

    Must be called before ``connect``.
    """
    if not info.encrypted:
        return
    sock.curve_secretkey = info.curve_secretkey
    sock.curve_publickey = info.curve_publickey
    sock.curve_serverkey = info.curve_publickey

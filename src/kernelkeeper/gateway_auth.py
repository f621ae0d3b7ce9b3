"""The gateway's authentication and CORS: a token, compared in constant time.

The token comes from ``Authorization: token T``, ``Authorization: bearer T``
or ``?token=T``. No token at all is 401, a wrong one 403, WebSockets
included (checked before the upgrade). ``GET /api`` and every CORS preflight
(``OPTIONS``) need none: a browser sends a preflight without credentials,
so refusing it (as Jupyter Kernel Gateway does with a token set) breaks
every cross-origin client.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

__all__ = [
    "CorsConfig",
    "auth_middleware",
    "check_token",
    "cors_headers",
    "is_loopback",
    "origin_allowed",
    "token_from",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class CorsConfig:
    """Cross-origin access. ``allow_origin``: ``""`` (none), ``"*"``, or origins
    separated by commas."""

    allow_origin: str = ""
    allow_headers: str = "Authorization, Content-Type, X-XSRFToken, X-Requested-With"
    allow_methods: str = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
    allow_credentials: bool = False
    expose_headers: str = "Location"
    max_age: int = 600


def token_from(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token a request carries, or None."""
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    token = query.get("token")
    return token or None


def check_token(expected: str, given: str | None) -> int:
    """0 if ``given`` is the token (or none is configured), else the HTTP status: 401
    for no token, 403 for a wrong one."""
    if not expected:
        return 0
    if given is None:
        return 401
    ok = hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))
    return 0 if ok else 403


def is_loopback(ip: str) -> bool:
    """Is ``ip`` (an address or ``localhost``) reachable from this host only?"""
    if ip in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _origins(cors: CorsConfig) -> set[str]:
    return {o.strip().rstrip("/") for o in cors.allow_origin.split(",") if o.strip()}


def origin_allowed(cors: CorsConfig, origin: str, host: str = "") -> bool:
    """May a page from ``origin`` talk to us (``host`` is the Host the request named)?"""
    origin = origin.rstrip("/")
    allowed = _origins(cors)
    if "*" in allowed or origin in allowed:
        return True
    # Same origin: the page was served by this host.
    _, _, rest = origin.partition("://")
    return bool(host) and rest == host


def cors_headers(cors: CorsConfig, origin: str | None, preflight: bool) -> dict[str, str]:
    """The CORS headers for a request from ``origin`` (none if it is not allowed)."""
    if not origin or not cors.allow_origin:
        return {}
    allowed = _origins(cors)
    if "*" not in allowed and origin.rstrip("/") not in allowed:
        return {}
    out = {"Vary": "Origin"}
    # A wildcard cannot carry credentials: name the origin instead.
    out["Access-Control-Allow-Origin"] = (
        "*" if "*" in allowed and not cors.allow_credentials else origin
    )
    if cors.allow_credentials:
        out["Access-Control-Allow-Credentials"] = "true"
    if preflight:
        out["Access-Control-Allow-Methods"] = cors.allow_methods
        out["Access-Control-Allow-Headers"] = cors.allow_headers
        out["Access-Control-Max-Age"] = str(cors.max_age)
    elif cors.expose_headers:
        out["Access-Control-Expose-Headers"] = cors.expose_headers
    return out


def _error(status: int, message: str) -> web.Response:
    reason = "Unauthorized" if status == 401 else "Forbidden"
    return web.json_response({"reason": reason, "message": message}, status=status)


def auth_middleware(token: str, cors: CorsConfig, open_paths: frozenset[str]) -> Any:
    """aiohttp middleware: answer preflights, check the token, add CORS headers."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            headers = cors_headers(cors, origin, preflight=True)
            headers.setdefault("Allow", cors.allow_methods)
            return web.Response(status=204, headers=headers)
        open_path = request.method == "GET" and request.path in open_paths
        if not open_path:
            status = check_token(token, token_from(request.headers, request.query))
            if status:
                message = (
                    "Authentication required: send 'Authorization: token <token>'"
                    if status == 401
                    else "Invalid token"
                )
                resp = _error(status, message)
                resp.headers.update(cors_headers(cors, origin, preflight=False))
                return resp
        try:
            response = await handler(request)
        except web.HTTPException as e:
            e.headers.update(cors_headers(cors, origin, preflight=False))
            raise
        if not response.prepared:  # a WebSocket has sent its headers already
            response.headers.update(cors_headers(cors, origin, preflight=False))
        return response

    return middleware

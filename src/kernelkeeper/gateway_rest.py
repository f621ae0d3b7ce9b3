"""The gateway's REST handlers, as jupyter_server serves them: ``/api``,
kernelspecs and their resource files, kernels, and ``/metrics``.

Errors are JSON ``{"reason", "message"}`` (:class:`ApiError`, turned into a
response by :func:`error_middleware`): 404 for an unknown id (named in the
message), 400 for a malformed body or a refused variable, 403 ``Resource
Limit`` when ``max_kernels`` is reached.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import mimetypes
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import __version__
from .errors import (
    DuplicateKernelError,
    KernelError,
    KernelLimitError,
    KernelSpecError,
    KernelTimeoutError,
    NoSuchKernel,
    NoSuchKernelId,
)
from .finder import KernelFinder, default_finder
from .gateway_core import ApiError, GatewayCore
from .gateway_env import parse_launch
from .kernelspec import KernelSpec

__all__ = ["ApiError", "KernelRoutes", "error_middleware", "read_json", "start_kernel"]

log = logging.getLogger("kernelkeeper.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, reason: str | None = None) -> web.Response:
    body = {"reason": reason or http.HTTPStatus(status).phrase, "message": message}
    return web.json_response(body, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON ``{"reason", "message"}``, never a traceback."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.message, e.reason)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, e.reason, None)
    except NoSuchKernelId as e:
        return error_response(404, f"Kernel does not exist: {e.kernel_id}")
    except Exception:
        log.exception("Unexpected error in %s %s", request.method, request.path)
        return error_response(500, "Internal gateway error (see the gateway's log)")


async def read_json(request: web.Request) -> Any:
    """The request's JSON body, None if it is empty; ApiError 400 if it is not JSON."""
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"Invalid JSON in body of request: {e}") from None


def dumps(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(obj), status=status, content_type="application/json", headers=headers
    )


# -- kernels ---------------------------------------------------------------------


async def start_kernel(gw: GatewayCore, body: Any, name: Any = None) -> str:
    """Start a kernel for a POST body (``name``, ``env``, ``kernel_id``); its id.

    A ``kernel_id`` of a running kernel returns that kernel, as jupyter_server does.
    """
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object")
    name = name if name is not None else body.get("name")
    if name is None or name == "":
        name = gw.mkm.default_kernel_name
    if not isinstance(name, str):
        raise ApiError(400, "name must be a string")
    try:
        req = parse_launch(body, gw.env_policy)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    if req.kernel_id is not None and req.kernel_id in gw.mkm:
        return req.kernel_id
    kw: dict[str, Any] = {"env": {**gw.base_env, **req.env}, **gw.start_kw}
    if req.cwd is not None:
        kw["cwd"] = req.cwd
    timeout = req.launch_timeout or gw.config.launch_timeout
    try:
        kid = await asyncio.wait_for(
            gw.mkm.start_kernel(name, kernel_id=req.kernel_id, **kw), timeout
        )
    except KernelLimitError:
        raise ApiError(403, "Resource Limit") from None
    except NoSuchKernel as e:
        raise ApiError(400, str(e), "No such kernel") from None
    except KernelSpecError as e:
        raise ApiError(400, str(e), "Bad kernel spec") from None
    except DuplicateKernelError as e:
        raise ApiError(409, str(e)) from None
    except (asyncio.TimeoutError, KernelTimeoutError):
        raise ApiError(504, f"Kernel did not start within {timeout:g} s") from None
    except KernelError as e:
        raise ApiError(500, f"Kernel failed to start: {str(e).splitlines()[0]}") from None
    if kid in gw.mkm:
        gw.prepare_bridge(kid)  # a WebSocket usually follows at once
    return kid


def _resource_path(resource_dir: str, fname: str) -> str | None:
    """The file ``fname`` directly in ``resource_dir`` (never kernel.json), or None."""
    root = os.path.realpath(resource_dir)
    path = os.path.realpath(os.path.join(root, fname))
    if os.path.dirname(path) != root or fname == "kernel.json" or not os.path.isfile(path):
        return None
    return path


class KernelRoutes:
    """Handlers for ``/api``, kernelspecs, kernels and metrics of one gateway."""

    def __init__(self, gw: GatewayCore, finder: KernelFinder | None = None) -> None:
        self.gw = gw
        self._finder = finder

    def add_to(self, app: web.Application, base: str) -> None:
        r = app.router
        r.add_get(base + "api", self.api)
        r.add_get(base + "api/kernelspecs", self.kernelspecs)
        r.add_get(base + "api/kernelspecs/{name}", self.kernelspec)
        r.add_get(base + "kernelspecs/{name}/{file}", self.resource)
        r.add_get(base + "api/kernels", self.list_kernels)
        r.add_post(base + "api/kernels", self.post_kernel)
        r.add_get(base + "api/kernels/{kernel_id}", self.get_kernel)
        r.add_delete(base + "api/kernels/{kernel_id}", self.delete_kernel)
        r.add_post(base + "api/kernels/{kernel_id}/interrupt", self.interrupt)
        r.add_post(base + "api/kernels/{kernel_id}/restart", self.restart)
        r.add_get(base + "metrics", self.metrics)

    async def api(self, request: web.Request) -> web.Response:
        return dumps({"version": __version__, "kernelkeeper": __version__})

    # -- kernelspecs ------------------------------------------------------------

    def _specs(self) -> dict[str, KernelSpec]:
        """Kernelspecs by the bare name a client starts them by (first one wins)."""
        finder = self._finder or default_finder()
        out: dict[str, KernelSpec] = {}
        for kernel_type, spec in finder.find_kernels():
            name = spec.name or kernel_type.partition("/")[2]
            out.setdefault(name, spec)
        return out

    def _spec_model(self, name: str, spec: KernelSpec) -> dict[str, Any]:
        resources: dict[str, str] = {}
        d = spec.resource_dir
        if d and os.path.isdir(d):
            for fname in sorted(os.listdir(d)):
                stem, _ = os.path.splitext(fname)
                url = f"{self.gw.base_url}kernelspecs/{name}/{fname}"
                if fname in ("kernel.js", "kernel.css"):
                    resources[fname] = url
                elif fname.startswith("logo-"):
                    resources[stem] = url
        return {"name": name, "spec": spec.to_dict(), "resources": resources}

    async def kernelspecs(self, request: web.Request) -> web.Response:
        specs = await asyncio.to_thread(self._specs)  # reads kernel.json files
        default = self.gw.mkm.default_kernel_name
        model = {
            "default": default if default in specs else next(iter(specs), default),
            "kernelspecs": {n: self._spec_model(n, s) for n, s in specs.items()},
        }
        return dumps(model)

    async def kernelspec(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        spec = (await asyncio.to_thread(self._specs)).get(name)
        if spec is None:
            raise ApiError(404, f"Kernel spec {name} not found")
        return dumps(self._spec_model(name, spec))

    async def resource(self, request: web.Request) -> web.StreamResponse:
        name, fname = request.match_info["name"], request.match_info["file"]
        spec = (await asyncio.to_thread(self._specs)).get(name)
        if spec is None or not spec.resource_dir:
            raise ApiError(404, f"Kernel spec {name} not found")
        path = await asyncio.to_thread(_resource_path, spec.resource_dir, fname)
        if path is None:
            raise ApiError(404, f"Kernel spec resource {name}/{fname} not found")
        ctype = mimetypes.guess_type(fname)[0] or "application/octet-stream"
        # Logos and kernel.js change only when the spec is reinstalled: cache for a
        # day, revalidated by ETag/Last-Modified (which FileResponse answers).
        headers = {"Cache-Control": "public, max-age=86400", "Content-Type": ctype}
        return web.FileResponse(path, headers=headers)

    # -- kernels ------------------------------------------------------------------

    def _model(self, kernel_id: str) -> dict[str, Any]:
        try:
            return self.gw.kernel_model(kernel_id)
        except NoSuchKernelId:
            raise ApiError(404, f"Kernel does not exist: {kernel_id}") from None

    def _known(self, kernel_id: str) -> None:
        if kernel_id not in self.gw.mkm:
            raise ApiError(404, f"Kernel does not exist: {kernel_id}")

    async def list_kernels(self, request: web.Request) -> web.Response:
        if not self.gw.config.list_kernels:
            raise ApiError(403, "Listing kernels is disabled")
        models = []
        for kid in self.gw.mkm.list_kernel_ids():
            try:
                models.append(self.gw.kernel_model(kid))
            except NoSuchKernelId:
                continue  # ended while we listed
        return dumps(models)

    async def post_kernel(self, request: web.Request) -> web.Response:
        kid = await start_kernel(self.gw, await read_json(request))
        location = f"{self.gw.base_url}api/kernels/{kid}"
        return dumps(self._model(kid), status=201, headers={"Location": location})

    async def get_kernel(self, request: web.Request) -> web.Response:
        return dumps(self._model(request.match_info["kernel_id"]))

    async def delete_kernel(self, request: web.Request) -> web.Response:
        kid = request.match_info["kernel_id"]
        self._known(kid)
        await self.gw.delete_kernel(kid)
        return web.Response(status=204)

    async def interrupt(self, request: web.Request) -> web.Response:
        kid = request.match_info["kernel_id"]
        self._known(kid)
        try:
            await self.gw.mkm.interrupt_kernel(kid)
        except NoSuchKernelId:
            raise ApiError(404, f"Kernel does not exist: {kid}") from None
        except KernelError as e:
            raise ApiError(409, f"Cannot interrupt kernel {kid}: {e}") from None
        return web.Response(status=204)

    async def restart(self, request: web.Request) -> web.Response:
        kid = request.match_info["kernel_id"]
        self._known(kid)
        await self.gw.restart_kernel(kid)
        return dumps(self._model(kid))

    async def metrics(self, request: web.Request) -> web.Response:
        body = self.gw.render_metrics().encode()
        return web.Response(
            body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

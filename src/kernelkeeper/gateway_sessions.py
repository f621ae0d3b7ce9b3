"""``/api/sessions``, as Jupyter Kernel Gateway serves it: a session ties a path
(a notebook) to a kernel. Kept in memory; a session whose kernel is gone is
forgotten when next listed or read, as jupyter_server does.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from aiohttp import web

from .errors import NoSuchKernelId
from .gateway_core import ApiError, GatewayCore
from .gateway_rest import dumps, read_json, start_kernel

__all__ = ["SessionRoutes"]


@dataclasses.dataclass
class _Session:
    id: str
    path: str
    name: str | None
    type: str
    kernel_id: str


class SessionRoutes:
    """The session store of one gateway, and its handlers."""

    def __init__(self, gw: GatewayCore) -> None:
        self.gw = gw
        self._sessions: dict[str, _Session] = {}
        gw.kernel_gone_hooks.append(self.forget_kernel)

    def add_to(self, app: web.Application, base: str) -> None:
        r = app.router
        r.add_get(base + "api/sessions", self.list)
        r.add_post(base + "api/sessions", self.create)
        r.add_get(base + "api/sessions/{session_id}", self.get)
        r.add_patch(base + "api/sessions/{session_id}", self.patch)
        r.add_delete(base + "api/sessions/{session_id}", self.delete)

    def forget_kernel(self, kernel_id: str) -> None:
        """The kernel was deleted: so are its sessions."""
        for sid in [s.id for s in self._sessions.values() if s.kernel_id == kernel_id]:
            del self._sessions[sid]

    def _model(self, s: _Session) -> dict[str, Any] | None:
        try:
            kernel = self.gw.kernel_model(s.kernel_id)
        except NoSuchKernelId:
            self._sessions.pop(s.id, None)
            return None
        return {
            "id": s.id,
            "path": s.path,
            "name": s.name,
            "type": s.type,
            "kernel": kernel,
            "notebook": {"path": s.path, "name": s.name},
        }

    def _find(self, session_id: str) -> _Session:
        s = self._sessions.get(session_id)
        if s is None or self._model(s) is None:
            raise ApiError(404, f"Session not found: {session_id}")
        return s

    async def list(self, request: web.Request) -> web.Response:
        models = [self._model(s) for s in list(self._sessions.values())]
        return dumps([m for m in models if m is not None])

    async def _kernel_for(self, kernel: Any) -> str:
        if kernel is None:
            kernel = {}
        if not isinstance(kernel, dict):
            raise ApiError(400, "kernel must be a JSON object")
        kid = kernel.get("id")
        if kid is not None:
            if not isinstance(kid, str) or kid not in self.gw.mkm:
                raise ApiError(400, f"No such kernel: {kid}")
            return kid
        body = {k: v for k, v in kernel.items() if k in ("name", "env")}
        return await start_kernel(self.gw, body)

    async def create(self, request: web.Request) -> web.Response:
        model = await read_json(request)
        if not isinstance(model, dict):
            raise ApiError(400, "No JSON data provided")
        nb = model.get("notebook")
        notebook: dict[str, Any] = nb if isinstance(nb, dict) else {}
        path = model.get("path", notebook.get("path"))
        if not isinstance(path, str):
            raise ApiError(400, "Missing field in JSON data: path")
        mtype = model.get("type", "notebook" if notebook else None)
        if not isinstance(mtype, str):
            raise ApiError(400, "Missing field in JSON data: type")
        name = model.get("name", notebook.get("name"))
        for s in list(self._sessions.values()):
            if s.path == path and self._model(s) is not None:
                return self._created(s)
        kid = await self._kernel_for(model.get("kernel"))
        s = _Session(str(uuid.uuid4()), path, name if isinstance(name, str) else None, mtype, kid)
        self._sessions[s.id] = s
        return self._created(s)

    def _created(self, s: _Session) -> web.Response:
        location = f"{self.gw.base_url}api/sessions/{s.id}"
        return dumps(self._model(s), status=201, headers={"Location": location})

    async def get(self, request: web.Request) -> web.Response:
        return dumps(self._model(self._find(request.match_info["session_id"])))

    async def patch(self, request: web.Request) -> web.Response:
        s = self._find(request.match_info["session_id"])
        model = await read_json(request)
        if not isinstance(model, dict):
            raise ApiError(400, "No JSON data provided")
        for key in ("path", "name", "type"):
            if key in model and not isinstance(model[key], str):
                raise ApiError(400, f"{key} must be a string")
        before = s.kernel_id
        if "kernel" in model:
            s.kernel_id = await self._kernel_for(model["kernel"])
        s.path = model.get("path", s.path)
        s.name = model.get("name", s.name)
        s.type = model.get("type", s.type)
        if s.kernel_id != before and before in self.gw.mkm:
            await self.gw.delete_kernel(before)  # as jupyter_server: the old kernel goes
        return dumps(self._model(s))

    async def delete(self, request: web.Request) -> web.Response:
        s = self._find(request.match_info["session_id"])
        del self._sessions[s.id]
        if s.kernel_id in self.gw.mkm:
            await self.gw.delete_kernel(s.kernel_id)
        return web.Response(status=204)

"""The gateway's REST API with real kernels: statuses, errors, auth, CORS, env, limits,
pools, sessions, metrics and the command line."""

from __future__ import annotations

import asyncio
import datetime
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from gwhelpers import AUTH, TOKEN, WsKernel, config, running, start_kernel
from helpers import wait_gone
from kernelkeeper.errors import ConfigurationError
from kernelkeeper.gateway import Gateway, GatewayConfig, main
from kernelkeeper.gateway_core import failure_reason

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def gw(request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    kw = getattr(request, "param", {})
    async for g in running(config(**kw)):
        yield g


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as s:
        yield s


@pytest.fixture
async def anon() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def error_of(r: aiohttp.ClientResponse, status: int) -> str:
    assert r.status == status, (r.status, await r.text())
    body = await r.json()
    assert set(body) >= {"reason", "message"}, body
    return str(body["message"])


# -- server, auth, CORS ---------------------------------------------------------


async def test_api_version_needs_no_token(gw: Gateway, anon: aiohttp.ClientSession) -> None:
    r = await anon.get(gw.url + "api")
    assert r.status == 200
    assert "version" in await r.json()


async def test_token_required_on_rest_and_websocket(
    gw: Gateway, anon: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    assert "Authentication" in await error_of(await anon.get(gw.url + "api/kernels"), 401)
    r = await anon.get(gw.url + "api/kernels", headers={"Authorization": "token wrong"})
    await error_of(r, 403)
    for h in (f"token {TOKEN}", f"Bearer {TOKEN}", f"bearer {TOKEN}"):
        r = await anon.get(gw.url + "api/kernels", headers={"Authorization": h})
        assert r.status == 200, h
    assert (await anon.get(gw.url + f"api/kernels?token={TOKEN}")).status == 200
    assert (await anon.get(gw.url + "api/kernels?token=nope")).status == 403
    assert (await anon.get(gw.url + "metrics")).status == 401
    kid = await start_kernel(http, gw)
    url = f"{gw.url}api/kernels/{kid}/channels?session_id=s1"
    for extra, status in (("", 401), ("&token=bad", 403)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await anon.ws_connect(url + extra)
        assert exc.value.status == status
    ws = await anon.ws_connect(url + f"&token={TOKEN}")
    await ws.close()


@pytest.mark.parametrize("gw", [{"allow_origin": "https://lab.example"}], indirect=True)
async def test_cors_preflight_needs_no_token(gw: Gateway, anon: aiohttp.ClientSession) -> None:
    pre = {
        "Origin": "https://lab.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    r = await anon.options(gw.url + "api/kernels", headers=pre)
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://lab.example"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    r = await anon.get(gw.url + "api/kernels", headers={"Origin": "https://lab.example", **AUTH})
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] == "https://lab.example"
    # Refused requests carry the header too, so the browser can show the 401.
    r = await anon.get(gw.url + "api/kernels", headers={"Origin": "https://lab.example"})
    assert r.status == 401
    assert r.headers["Access-Control-Allow-Origin"] == "https://lab.example"
    r = await anon.options(
        gw.url + "api/kernels", headers={**pre, "Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in r.headers


def test_no_token_refuses_remote_ip() -> None:
    with pytest.raises(ConfigurationError, match="without a token"):
        Gateway(GatewayConfig(ip="0.0.0.0", token=""))
    Gateway(GatewayConfig(ip="0.0.0.0", token="", allow_unauthenticated_remote=True))
    Gateway(GatewayConfig(ip="0.0.0.0", token="t"))
    Gateway(GatewayConfig(ip="::1", token=""))
    assert main(["--ip", "0.0.0.0", "--port", "0"]) == 2


# -- kernelspecs ----------------------------------------------------------------


async def test_kernelspecs_and_resources(gw: Gateway, http: aiohttp.ClientSession) -> None:
    r = await http.get(gw.url + "api/kernelspecs")
    assert r.status == 200
    model = await r.json()
    assert model["default"] == "python3"
    py = model["kernelspecs"]["python3"]
    assert py["name"] == "python3"
    assert py["spec"]["argv"] and py["spec"]["display_name"]
    logo = py["resources"]["logo-64x64"]
    assert "/kernelspecs/python3/logo-64x64.png" in logo
    assert (await (await http.get(gw.url + "api/kernelspecs/python3")).json()) == py
    r = await http.get(gw.url.rstrip("/") + logo)
    assert r.status == 200
    assert r.headers["Content-Type"] == "image/png"
    assert "max-age" in r.headers["Cache-Control"]
    assert (await r.read()).startswith(b"\x89PNG")
    etag = r.headers["ETag"]
    r = await http.get(gw.url.rstrip("/") + logo, headers={"If-None-Match": etag})
    assert r.status == 304
    assert "nope" in await error_of(await http.get(gw.url + "api/kernelspecs/nope"), 404)
    await error_of(await http.get(gw.url + "kernelspecs/python3/missing.png"), 404)
    await error_of(await http.get(gw.url + "kernelspecs/python3/kernel.json"), 404)
    await error_of(await http.get(gw.url + "kernelspecs/python3/..%2F..%2Fetc%2Fpasswd"), 404)


# -- kernels ------------------------------------------------------------------------


async def test_kernel_crud_statuses(gw: Gateway, http: aiohttp.ClientSession) -> None:
    r = await http.post(gw.url + "api/kernels", json={"name": "python3"})
    assert r.status == 201
    model = await r.json()
    kid = model["id"]
    assert r.headers["Location"] == f"/api/kernels/{kid}"
    assert set(model) >= {"id", "name", "last_activity", "execution_state", "connections"}
    assert model["name"] == "python3"
    assert isinstance(model["connections"], int)
    # The exact format jupyter_server's gateway client parses.
    datetime.datetime.strptime(model["last_activity"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert [k["id"] for k in await (await http.get(gw.url + "api/kernels")).json()] == [kid]
    assert (await (await http.get(gw.url + f"api/kernels/{kid}")).json())["id"] == kid
    assert (await http.post(gw.url + f"api/kernels/{kid}/interrupt")).status == 204
    r = await http.post(gw.url + f"api/kernels/{kid}/restart")
    assert r.status == 200
    assert (await r.json())["id"] == kid
    assert (await http.delete(gw.url + f"api/kernels/{kid}")).status == 204
    for method, path in (
        ("GET", f"api/kernels/{kid}"),
        ("DELETE", f"api/kernels/{kid}"),
        ("POST", f"api/kernels/{kid}/interrupt"),
        ("POST", f"api/kernels/{kid}/restart"),
    ):
        message = await error_of(await http.request(method, gw.url + path), 404)
        assert kid in message, (method, path, message)
    assert await (await http.get(gw.url + "api/kernels")).json() == []


async def test_post_without_body_starts_the_default(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    r = await http.post(gw.url + "api/kernels")
    assert r.status == 201
    assert (await r.json())["name"] == "python3"


@pytest.mark.parametrize(
    "body", ["{not json", "[1, 2]", '{"name": 5}', '{"env": "x"}', '{"kernel_id": "../x"}']
)
async def test_bad_post_bodies_are_400(gw: Gateway, http: aiohttp.ClientSession, body: str) -> None:
    r = await http.post(
        gw.url + "api/kernels", data=body, headers={"Content-Type": "application/json"}
    )
    await error_of(r, 400)
    assert gw.mkm.list_kernel_ids() == []


async def test_unknown_kernel_name_is_clear_and_leaves_nothing(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    # What ran before the request (a fork-server template, when the suite runs
    # with one) is not the request's to end.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    r = await http.post(gw.url + "api/kernels", json={"name": "no-such-kernel"})
    message = await error_of(r, 400)
    assert "no-such-kernel" in message and "python3" in message
    assert gw.mkm.list_kernel_ids() == []
    assert [p for p in psutil.Process().children(recursive=True) if p.pid not in before] == []


@pytest.mark.parametrize("gw", [{"max_kernels": 1}], indirect=True)
async def test_max_kernels_is_403_resource_limit(gw: Gateway, http: aiohttp.ClientSession) -> None:
    await start_kernel(http, gw)
    r = await http.post(gw.url + "api/kernels", json={})
    assert await error_of(r, 403) == "Resource Limit"
    assert len(gw.mkm.list_kernel_ids()) == 1


async def test_kernel_id_from_body_or_env(gw: Gateway, http: aiohttp.ClientSession) -> None:
    kid = "0b9f0c3e-1111-4222-8333-444455556666"
    r = await http.post(gw.url + "api/kernels", json={"env": {"KERNEL_ID": kid}})
    assert r.status == 201 and (await r.json())["id"] == kid
    # An existing id gives that kernel back, as jupyter_server does.
    r = await http.post(gw.url + "api/kernels", json={"kernel_id": kid})
    assert r.status == 201 and (await r.json())["id"] == kid
    assert gw.mkm.list_kernel_ids() == [kid]


# -- env --------------------------------------------------------------------------


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "do-not-leak")
    monkeypatch.setenv("ALLOWED_VAR", "from-server")


async def kernel_env(http: aiohttp.ClientSession, gw: Gateway, kid: str, *names: str) -> list[Any]:
    kc = await WsKernel.connect(http, gw, kid)
    code = f"import os, json; print(json.dumps([os.environ.get(n) for n in {list(names)!r}]))"
    out, reply = await kc.execute(code)
    await kc.close()
    assert reply["content"]["status"] == "ok", reply
    import json

    return list(json.loads(out))


@pytest.mark.parametrize("gw", [{"allowed_envs": frozenset({"ALLOWED_VAR"})}], indirect=True)
async def test_env_filtering(secret_env: None, gw: Gateway, http: aiohttp.ClientSession) -> None:
    env = {
        "KERNEL_FOO": "bar baz/qux=1",
        "ALLOWED_VAR": "from-client",
        "NOT_ALLOWED": "x",
        "KERNEL_LAUNCH_TIMEOUT": "100",
    }
    kid = await start_kernel(http, gw, env=env)
    got = await kernel_env(
        http, gw, kid, "KERNEL_FOO", "ALLOWED_VAR", "NOT_ALLOWED", "MY_SERVICE_TOKEN", "PATH"
    )
    assert got[:4] == ["bar baz/qux=1", "from-client", None, None]
    assert got[4]  # the rest of our environment is there


@pytest.mark.parametrize(
    "value", ["a; rm -rf /", "$(id)", "`id`", "a|b", "x\ny", "tab\there", "q'uote", "a > b"]
)
async def test_env_injection_is_refused_naming_the_key(
    gw: Gateway, http: aiohttp.ClientSession, value: str
) -> None:
    r = await http.post(gw.url + "api/kernels", json={"env": {"KERNEL_EVIL": value}})
    message = await error_of(r, 400)
    assert "KERNEL_EVIL" in message
    assert value not in message
    assert gw.mkm.list_kernel_ids() == []


async def test_env_bad_names_and_values_are_400(gw: Gateway, http: aiohttp.ClientSession) -> None:
    for env in ({"KERNEL_X": 5}, {"bad name": "x"}, {"KERNEL_LAUNCH_TIMEOUT": "soon"}):
        r = await http.post(gw.url + "api/kernels", json={"env": env})
        await error_of(r, 400)
    r = await http.post(gw.url + "api/kernels", json={"env": {"KERNEL_LAUNCH_TIMEOUT": "-1"}})
    assert "KERNEL_LAUNCH_TIMEOUT" in await error_of(r, 400)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "work" / "sub").mkdir(parents=True)
    return (tmp_path / "work").resolve()


async def test_working_dir_within_root(root: Path, http: aiohttp.ClientSession) -> None:
    async for gw in running(config(working_dir_root=str(root))):
        kid = await start_kernel(http, gw, env={"KERNEL_WORKING_DIR": str(root / "sub")})
        kc = await WsKernel.connect(http, gw, kid)
        out, _ = await kc.execute("import os; print(os.getcwd())")
        await kc.close()
        assert out.strip() == str(root / "sub")
        for bad in ("/", str(root / ".." / ".."), str(root / "missing")):
            r = await http.post(gw.url + "api/kernels", json={"env": {"KERNEL_WORKING_DIR": bad}})
            assert "KERNEL_WORKING_DIR" in await error_of(r, 400)
        assert gw.mkm.list_kernel_ids() == [kid]


async def test_launch_timeout_is_honoured(
    kernel_dir: Callable[..., str], http: aiohttp.ClientSession
) -> None:
    name = kernel_dir("slow_start", env={"KK_TEST_START_DELAY": "30"})
    async for gw in running(config()):
        r = await http.post(
            gw.url + "api/kernels", json={"name": name, "env": {"KERNEL_LAUNCH_TIMEOUT": "1"}}
        )
        assert "1 s" in await error_of(r, 504)
        assert gw.mkm.list_kernel_ids() == []


# -- pools, sessions, metrics ---------------------------------------------------------


@pytest.mark.parametrize("gw", [{"pools": {"python3": 1}}], indirect=True)
async def test_pool_serves_post(gw: Gateway, http: aiohttp.ClientSession) -> None:
    pool = gw.pools["python3"]
    await pool.wait_filled(timeout=120)
    pid = pool.pids()[0]
    kid = await start_kernel(http, gw)
    assert pool.hits == 1
    assert gw.mkm.get_kernel(kid).process is not None
    assert gw.mkm.get_kernel(kid).process.pid == pid  # type: ignore[union-attr]
    # The WebSocket runs on the pooled kernel's own sockets: shell, iopub,
    # stdin and control all work through them.
    kc = await WsKernel.connect(http, gw, kid)
    out, _ = await kc.execute("print(6*7)")
    assert out == "42\n"
    mid = await kc.send("execute_request", {"code": "print(input() * 2)", "allow_stdin": True})
    await kc.until(lambda d: d["msg_type"] == "input_request")
    await kc.send("input_reply", {"value": "ab"}, channel="stdin")
    assert (await kc.collect(mid))[0] == "abab\n"
    mid = await kc.send("kernel_info_request", {}, channel="control")
    await kc.until(lambda d: d["msg_type"] == "kernel_info_reply" and d["channel"] == "control")
    await kc.close()
    # A second session of the same kernel gets sockets of its own.
    other = await WsKernel.connect(http, gw, kid)
    assert (await other.execute("print(7)"))[0] == "7\n"
    await other.close()
    # A request with its own variables cannot be served from the pool.
    await start_kernel(http, gw, env={"KERNEL_X": "1"})
    assert pool.hits == 1 and pool.misses >= 1


@pytest.mark.parametrize("gw", [{"pools": {"python3": 1}}], indirect=True)
async def test_metrics_show_pool_readiness(gw: Gateway, http: aiohttp.ClientSession) -> None:
    await gw.pools["python3"].wait_filled(timeout=120)
    text = await (await http.get(gw.url + "metrics")).text()
    assert 'kernelkeeper_pool_kernels{kernel_name="python3",state="ready"} 1' in text
    assert 'kernelkeeper_pool_kernels{kernel_name="python3",state="starting"} 0' in text
    assert 'kernelkeeper_pool_target_kernels{kernel_name="python3"} 1' in text
    assert "# TYPE kernelkeeper_pool_kernels gauge" in text


def test_failure_reason_says_why() -> None:
    assert failure_reason({"reason": "died", "signal": 9, "exit_code": -9}) == "died (signal 9)"
    assert failure_reason({"reason": "died", "exit_code": 1}) == "died (exit code 1)"
    hung = {"reason": "hung", "exit_code": None, "missed_heartbeats": 3, "why": "limit reached"}
    assert failure_reason(hung) == "hung (3 missed heartbeats): limit reached"
    assert failure_reason({}) == "failed"


async def test_sessions_crud(gw: Gateway, http: aiohttp.ClientSession) -> None:
    body = {"path": "a.ipynb", "type": "notebook", "name": "a", "kernel": {"name": "python3"}}
    r = await http.post(gw.url + "api/sessions", json=body)
    assert r.status == 201
    s = await r.json()
    assert r.headers["Location"] == f"/api/sessions/{s['id']}"
    assert s["path"] == "a.ipynb" and s["type"] == "notebook"
    kid = s["kernel"]["id"]
    assert kid in gw.mkm
    again = await (await http.post(gw.url + "api/sessions", json=body)).json()
    assert again["id"] == s["id"]
    assert [x["id"] for x in await (await http.get(gw.url + "api/sessions")).json()] == [s["id"]]
    r = await http.patch(gw.url + f"api/sessions/{s['id']}", json={"path": "b.ipynb"})
    assert r.status == 200 and (await r.json())["path"] == "b.ipynb"
    assert (await (await http.get(gw.url + f"api/sessions/{s['id']}")).json())["path"] == "b.ipynb"
    await error_of(await http.post(gw.url + "api/sessions", json={"type": "notebook"}), 400)
    await error_of(await http.post(gw.url + "api/sessions", data="{x"), 400)
    assert (await http.delete(gw.url + f"api/sessions/{s['id']}")).status == 204
    assert kid not in gw.mkm
    assert s["id"] in await error_of(await http.get(gw.url + f"api/sessions/{s['id']}"), 404)
    await error_of(await http.delete(gw.url + f"api/sessions/{s['id']}"), 404)


async def test_metrics(gw: Gateway, http: aiohttp.ClientSession) -> None:
    kid = await start_kernel(http, gw)
    kc = await WsKernel.connect(http, gw, kid)
    r = await http.get(gw.url + "metrics")
    assert r.status == 200
    text = await r.text()
    assert "kernelkeeper_kernels{state=" in text
    assert "kernelkeeper_gateway_websockets 1" in text
    assert "kernelkeeper_gateway_websocket_dropped_messages_total 0" in text
    await kc.close()


# -- command line ---------------------------------------------------------------------


async def test_command_line_serves_and_ends_its_kernels(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kernelkeeper.gateway",
        "--port",
        "0",
        "--token-file",
        str(token_file),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line.startswith("kernelkeeper gateway listening on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].strip()
        async with aiohttp.ClientSession(headers={"Authorization": "token file-token"}) as s:
            r = await s.post(url + "api/kernels", json={})
            assert r.status == 201
        kernels = psutil.Process(proc.pid).children(recursive=True)
        assert kernels
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        await asyncio.to_thread(wait_gone, kernels, 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

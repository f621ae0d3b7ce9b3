"""kernelkeeper's kernel gateway: jupyter_server's kernel REST and WebSocket API on
aiohttp, over :class:`~kernelkeeper.AsyncMultiKernelManager`.

In-process::

    async with Gateway(GatewayConfig(port=0, token="T")) as gw:
        print(gw.url)

From a shell: ``python -m kernelkeeper.gateway [--ip 127.0.0.1] [--port 8888]
[--token T | --token-file F] [--base-url /] [--pool NAME=N ...] [--max-kernels N]
[--cull-idle-timeout S] [--allow-origin O] [--allow-unauthenticated-remote]
[--no-fork-server]``.
It prints ``kernelkeeper gateway listening on http://HOST:PORT/BASE`` to
stderr once it listens, and ends every kernel on SIGTERM or SIGINT.

Parts: :mod:`kernelkeeper.gateway_rest` and :mod:`kernelkeeper.gateway_sessions`
(REST), :mod:`kernelkeeper.gateway_ws` and :mod:`kernelkeeper.gateway_bridge`
(WebSockets), :mod:`kernelkeeper.gateway_wire` (formats),
:mod:`kernelkeeper.gateway_auth` (token, CORS), :mod:`kernelkeeper.gateway_env`
(what a start request may set).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from . import forkserver
from .errors import ConfigurationError
from .gateway_auth import auth_middleware
from .gateway_core import GatewayConfig, GatewayCore
from .gateway_rest import KernelRoutes, error_middleware
from .gateway_sessions import SessionRoutes
from .gateway_ws import channels_handler

__all__ = ["Gateway", "GatewayConfig", "main"]

log = logging.getLogger("kernelkeeper.gateway")

TOKEN_ENV = "KERNELKEEPER_GATEWAY_TOKEN"


class Gateway(GatewayCore):
    """The gateway server: an aiohttp app over a multi-kernel manager.

    ``await gw.start()`` listens (``gw.url`` then says where); ``await gw.aclose()``
    closes every WebSocket, stops listening and ends every kernel. Also an
    ``async with`` block.
    """

    def __init__(self, config: GatewayConfig | None = None) -> None:
        super().__init__(config)
        self.kernels = KernelRoutes(self)
        self.sessions = SessionRoutes(self)
        #: ``http://HOST:PORT/BASE/`` once listening.
        self.url = ""
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        """The aiohttp application (routes and middlewares)."""
        open_paths = frozenset({self.base_url + "api", self.base_url + "api/"})
        app = web.Application(
            middlewares=[
                error_middleware,
                auth_middleware(self.config.token, self.cors, open_paths),
            ],
            client_max_size=self.config.max_message_size,
        )
        self.kernels.add_to(app, self.base_url)
        self.sessions.add_to(app, self.base_url)
        app.router.add_get(
            self.base_url + "api/kernels/{kernel_id}/channels", channels_handler(self)
        )
        return app

    async def start(self) -> None:
        """Start the kernel manager (filling pools) and listen."""
        await self.start_kernels()
        self._runner = web.AppRunner(
            self.make_app(), handle_signals=False, access_log=None, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.ip, self.config.port)
        try:
            await site.start()
        except OSError as e:
            await self.aclose()
            where = f"{self.config.ip}:{self.config.port}"
            raise ConfigurationError(f"Cannot listen on {where}: {e}") from e
        host, port = self._runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in str(host) else host
        self.url = f"http://{shown}:{port}{self.base_url}"

    async def aclose(self) -> None:
        """Close every WebSocket, stop listening, and end every kernel."""
        self.closing = True
        runner, self._runner = self._runner, None
        await self.close_kernels()  # first: the sockets get their close frames
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- command line ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kernelkeeper gateway",
        description="Serve kernels over Jupyter's REST and WebSocket API.",
    )
    p.add_argument("--ip", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token", default=None, help=f"(or the {TOKEN_ENV} variable)")
    auth.add_argument("--token-file", default=None, help="read the token from this file")
    p.add_argument("--base-url", default="/")
    p.add_argument("--pool", action="append", default=[], metavar="NAME=N")
    p.add_argument("--max-kernels", type=int, default=None)
    p.add_argument("--cull-idle-timeout", type=float, default=None, metavar="S")
    p.add_argument("--cull-interval", type=float, default=60.0, metavar="S")
    p.add_argument("--allow-origin", default="")
    p.add_argument("--allow-env", action="append", default=[], metavar="NAME")
    p.add_argument("--working-dir-root", default=None, metavar="DIR")
    p.add_argument("--allow-unauthenticated-remote", action="store_true")
    p.add_argument(
        "--fork-server",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fork Python kernels from a template that has imported ipykernel (default on)",
    )
    p.add_argument("--log-level", default="WARNING")
    return p


def config_from_args(argv: Sequence[str]) -> GatewayConfig:
    """The configuration the command line ``argv`` asks for (ConfigurationError if bad)."""
    args = _parser().parse_args(list(argv))
    token = args.token
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise ConfigurationError(f"Cannot read --token-file {args.token_file}: {e}") from e
        if not token:
            raise ConfigurationError(f"--token-file {args.token_file} is empty")
    if token is None:
        # Taken out of our environment, so that no kernel inherits it.
        token = os.environ.pop(TOKEN_ENV, "")
    pools: dict[str, int] = {}
    for spec in args.pool:
        name, sep, n = spec.partition("=")
        if not sep or not name or not n.isdigit():
            raise ConfigurationError(f"--pool {spec!r}: expected NAME=N")
        pools[name] = int(n)
    return GatewayConfig(
        ip=args.ip,
        port=args.port,
        token=token,
        base_url=args.base_url,
        pools=pools,
        max_kernels=args.max_kernels,
        cull_idle_timeout=args.cull_idle_timeout,
        cull_interval=args.cull_interval,
        allow_origin=args.allow_origin,
        allowed_envs=frozenset(args.allow_env),
        working_dir_root=args.working_dir_root,
        allow_unauthenticated_remote=args.allow_unauthenticated_remote,
        fork_server=args.fork_server,
    )


async def serve(config: GatewayConfig) -> None:
    """Run a gateway until SIGTERM or SIGINT, then end every kernel."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Gateway(config) as gw:
            print(f"kernelkeeper gateway listening on {gw.url}", file=sys.stderr, flush=True)
            await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        # The kernels are gone: end the fork-server templates now rather than
        # when they notice that we exited.
        await asyncio.to_thread(forkserver.shutdown_templates)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kernelkeeper gateway`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = config_from_args(argv)
        config.check()
        level = _parser().parse_known_args(list(argv))[0].log_level
        logging.basicConfig(level=str(level).upper(), format="%(asctime)s %(name)s %(message)s")
        asyncio.run(serve(config))
    except ConfigurationError as e:
        print(f"kernelkeeper gateway: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

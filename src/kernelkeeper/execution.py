"""Running code: one execution's reply and outputs, collected through the router.

:func:`execute_and_wait` sends an execute_request and waits for both its
reply and its idle status, passing every iopub message of the execution to
an output hook and every input_request to a stdin hook. Those hooks run on
the client's event loop (the blocking face relays them to the caller's
thread). A kernel that dies meanwhile fails the wait with
:class:`~kernelkeeper.errors.KernelDiedError`.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from .channels import Channel
from .errors import KernelTimeoutError, NotRunningError
from .liveness import Liveness
from .protocol import execute_content
from .router import Router
from .session import Message, Session


class ExecutionHost(Protocol):
    """What an execution needs of its client (described here so that this
    module never imports the client)."""

    router: Router
    session: Session
    shell_channel: Channel
    liveness: Liveness

    @property
    def channels_running(self) -> bool: ...

    def input(self, string: str) -> None: ...


__all__ = [
    "CellResult",
    "ExecutionMethods",
    "OutputHook",
    "StdinHook",
    "output_from_msg",
    "print_output",
]

OutputHook = Callable[[Message], Any]
StdinHook = Callable[[Message], Any]


@dataclasses.dataclass
class CellResult:
    """What one execution produced: the reply plus its outputs in notebook form."""

    reply: Message
    outputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.reply["content"].get("status", ""))

    @property
    def execution_count(self) -> int | None:
        count = self.reply["content"].get("execution_count")
        return None if count is None else int(count)

    @property
    def stdout(self) -> str:
        return "".join(o["text"] for o in self.outputs if o.get("name") == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(o["text"] for o in self.outputs if o.get("name") == "stderr")

    @property
    def error(self) -> dict[str, Any] | None:
        for o in self.outputs:
            if o["output_type"] == "error":
                return o
        return None

    def result(self) -> dict[str, Any] | None:
        """The execute_result's data bundle, if there was one."""
        for o in self.outputs:
            if o["output_type"] == "execute_result":
                return dict(o["data"])
        return None


def output_from_msg(msg: Message) -> dict[str, Any] | None:
    """The notebook output for an iopub message (None for non-output messages)."""
    t, c = msg["msg_type"], msg["content"]
    if t == "stream":
        return {"output_type": "stream", "name": c.get("name"), "text": c.get("text", "")}
    if t in ("display_data", "update_display_data"):
        return {
            "output_type": "display_data",
            "data": c.get("data", {}),
            "metadata": c.get("metadata", {}),
        }
    if t == "execute_result":
        return {
            "output_type": "execute_result",
            "data": c.get("data", {}),
            "metadata": c.get("metadata", {}),
            "execution_count": c.get("execution_count"),
        }
    if t == "error":
        return {
            "output_type": "error",
            "ename": c.get("ename"),
            "evalue": c.get("evalue"),
            "traceback": c.get("traceback", []),
        }
    return None


def print_output(msg: Message) -> None:
    """Write an iopub message's output to this process's stdout/stderr."""
    t, c = msg["msg_type"], msg["content"]
    if t == "stream":
        stream = sys.stdout if c.get("name") == "stdout" else sys.stderr
        stream.write(c.get("text", ""))
        stream.flush()
    elif t in ("display_data", "execute_result"):
        text = c.get("data", {}).get("text/plain")
        if text is not None:
            print(text, flush=True)
    elif t == "error":
        print("\n".join(c.get("traceback", [])), file=sys.stderr, flush=True)


class OutputCollector:
    """Builds a :class:`CellResult`'s outputs from iopub messages (merging streams)."""

    def __init__(self, on_output: OutputHook | None = None) -> None:
        self.outputs: list[dict[str, Any]] = []
        self.on_output = on_output

    def __call__(self, msg: Message) -> None:
        out = output_from_msg(msg)
        outputs = self.outputs
        if out is not None:
            if (
                out["output_type"] == "stream"
                and outputs
                and outputs[-1].get("name") == out["name"]
            ):
                outputs[-1]["text"] += out["text"]
            elif msg["msg_type"] != "update_display_data":
                outputs.append(out)
        if self.on_output is not None:
            self.on_output(msg)


async def maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value


async def execute_and_wait(
    kc: ExecutionHost,
    content: Mapping[str, Any],
    timeout: float | None,
    output_hook: OutputHook,
    stdin_hook: StdinHook | None,
) -> Message:
    """Execute, wait for the reply *and* the idle status; return the reply.

    ``output_hook`` gets every iopub message of the execution but its final
    idle status; ``stdin_hook`` (default: a prompt on this terminal)
    answers input_request messages. Both run on the loop.
    """
    if not kc.channels_running:
        raise NotRunningError("Channels are not running; call start_channels() first")
    kc.liveness.check()
    loop = asyncio.get_running_loop()
    idle: asyncio.Future[None] = loop.create_future()
    msg = kc.session.msg("execute_request", dict(content))
    stdin_tasks: set[asyncio.Task[Any]] = set()

    def on_iopub(m: Message) -> None:
        if m["msg_type"] == "status" and m["content"].get("execution_state") == "idle":
            if not idle.done():
                idle.set_result(None)
            return
        output_hook(m)

    def on_stdin(m: Message) -> None:
        hook = stdin_hook or (lambda m: terminal_stdin(kc, m))
        t = loop.create_task(maybe_await(hook(m)))
        stdin_tasks.add(t)
        t.add_done_callback(stdin_tasks.discard)

    def listener(m: Message) -> None:
        (on_stdin if m["msg_type"] == "input_request" else on_iopub)(m)

    sub = kc.router.subscribe(msg["msg_id"], listener=listener, end=idle)
    try:
        kc.shell_channel.send(msg)
        assert sub.reply is not None
        try:
            await asyncio.wait_for(asyncio.gather(asyncio.shield(sub.reply), idle), timeout)
        except asyncio.TimeoutError:
            raise KernelTimeoutError(f"Execution did not finish within {timeout} s") from None
        return sub.reply.result()
    finally:
        sub.close()
        for t in stdin_tasks:
            t.cancel()


async def terminal_stdin(kc: ExecutionHost, msg: Message) -> None:
    """Answer an input_request from this process's terminal (off the loop)."""
    prompt = msg["content"].get("prompt", "")
    password = msg["content"].get("password", False)
    loop = asyncio.get_running_loop()
    if password:
        import getpass

        value = await loop.run_in_executor(None, getpass.getpass, prompt)
    else:
        value = await loop.run_in_executor(None, builtins.input, prompt)
    kc.input(value)


class ExecutionMethods:
    """The client's methods that run code and collect what it produced."""

    allow_stdin: bool = True

    def _host(self) -> ExecutionHost:
        # The client this is mixed into is the host.
        return cast("ExecutionHost", self)

    async def execute_interactive(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: Mapping[str, str] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
        timeout: float | None = None,
        output_hook: OutputHook | None = None,
        stdin_hook: StdinHook | None = None,
    ) -> Message:
        """Execute ``code`` and wait for its reply, passing iopub messages to ``output_hook``.

        Without ``output_hook``, output is written to this process's stdout and
        stderr as jupyter_client does. ``stdin_hook`` answers input_request
        messages (default: ask on this terminal). Both hooks run on the
        event loop, so they must be quick; raises :class:`KernelDiedError`
        if the kernel dies first.
        """
        allow = self.allow_stdin if allow_stdin is None else allow_stdin
        content = execute_content(
            code, silent, store_history, user_expressions, allow, stop_on_error
        )
        return await execute_and_wait(
            self._host(), content, timeout, output_hook or print_output, stdin_hook
        )

    async def run_cell(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_output: OutputHook | None = None,
        stdin_hook: StdinHook | None = None,
        silent: bool = False,
        store_history: bool = True,
        stop_on_error: bool = True,
    ) -> CellResult:
        """Execute ``code`` and collect its outputs (stream, display, result, error).

        ``on_output`` sees every iopub message of the execution as it arrives
        (on the event loop). Raises :class:`KernelDiedError` if the kernel
        dies first.
        """
        content = execute_content(
            code, silent, store_history, None, stdin_hook is not None, stop_on_error
        )
        collect = OutputCollector(on_output)
        reply = await execute_and_wait(self._host(), content, timeout, collect, stdin_hook)
        return CellResult(reply, collect.outputs)

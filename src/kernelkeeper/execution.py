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
import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .channels import Channel
from .errors import KernelTimeoutError, NotRunningError
from .router import Router
from .session import Message, Session


class ExecutionHost(Protocol):
    """What an execution needs of its client (described here so that this
    module never imports the client)."""

    router: Router
    session: Session
    shell_channel: Channel

    @property
    def channels_running(self) -> bool: ...

    def _raise_if_dead(self) -> None: ...

    async def _default_stdin_hook(self, msg: Message) -> None: ...


__all__ = ["CellResult", "OutputHook", "StdinHook", "output_from_msg", "print_output"]

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
    idle status; ``stdin_hook`` (default: the client's terminal prompt)
    answers input_request messages. Both run on the loop.
    """
    if not kc.channels_running:
        raise NotRunningError("Channels are not running; call start_channels() first")
    kc._raise_if_dead()
    loop = asyncio.get_running_loop()
    idle: asyncio.Future[None] = loop.create_future()
    msg = kc.session.msg("execute_request", dict(content))
    msg_id = msg["msg_id"]
    stdin_tasks: set[asyncio.Task[Any]] = set()

    def on_iopub(m: Message) -> None:
        if m["msg_type"] == "status" and m["content"].get("execution_state") == "idle":
            if not idle.done():
                idle.set_result(None)
            return
        output_hook(m)

    def on_stdin(m: Message) -> None:
        hook = stdin_hook or kc._default_stdin_hook
        t = loop.create_task(maybe_await(hook(m)))
        stdin_tasks.add(t)
        t.add_done_callback(stdin_tasks.discard)

    def listener(m: Message) -> None:
        (on_stdin if m["msg_type"] == "input_request" else on_iopub)(m)

    router = kc.router
    reply_fut = router.expect_reply(msg_id)
    router.listen(msg_id, listener, end=idle)
    try:
        kc.shell_channel.send(msg)
        try:
            await asyncio.wait_for(asyncio.gather(asyncio.shield(reply_fut), idle), timeout)
        except asyncio.TimeoutError:
            raise KernelTimeoutError(f"Execution did not finish within {timeout} s") from None
        return reply_fut.result()
    finally:
        router.forget(msg_id)
        for t in stdin_tasks:
            t.cancel()

"""Round trips on one kernel per library, beside a raw pyzmq floor.

(5) kernel_info and execute("1+1") through each library's blocking client, and
through :class:`RawShell` (a bare DEALER on jupyter_client's kernel) in the
same rotation: the part of a round trip no client removes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench_common import LIBS, REPLY_TIMEOUT, Params, Row, alive, ms, orders, p99, progress
from bench_kernels import drain, one_kernel_each


class RawShell:
    """The floor of a round trip: a bare synchronous pyzmq DEALER plus
    jupyter_client's Session, no iopub, no threads, no event loop."""

    def __init__(self, km: Any) -> None:
        import zmq
        from jupyter_client.session import Session

        info = km.get_connection_info()
        key = info["key"] if isinstance(info["key"], bytes) else info["key"].encode()
        self.session = Session(key=key, signature_scheme=info["signature_scheme"])
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(f"{info['transport']}://{info['ip']}:{info['shell_port']}")

    def request(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        sent = self.session.send(self.sock, msg_type, content)
        assert sent is not None
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            if not self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                raise TimeoutError(f"no {msg_type} reply within {REPLY_TIMEOUT} s")
            _idents, msg = self.session.recv(self.sock, mode=0)
            if msg is not None and msg["parent_header"].get("msg_id") == sent["msg_id"]:
                return msg  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


EXECUTE_1P1 = {
    "code": "1+1",
    "silent": False,
    "store_history": True,
    "user_expressions": {},
    "allow_stdin": False,
    "stop_on_error": True,
}


def _client_calls(kc: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """A client's blocking kernel_info and execute("1+1") round trips."""

    def kernel_info() -> Any:
        return kc.kernel_info(reply=True, timeout=REPLY_TIMEOUT)

    def execute() -> Any:
        return kc.execute("1+1", reply=True, timeout=REPLY_TIMEOUT)

    return kernel_info, execute


def bench_roundtrip(p: Params) -> list[Row]:
    """(5) kernel_info and execute("1+1") round trips (blocking, reply=True).

    A third, raw pyzmq client (see :class:`RawShell`) talks to jupyter_client's
    kernel in the same rotation: the part of a round trip no client removes.
    """
    progress(f"roundtrip: {p.calls} calls x 2 messages x 2 libraries (+ raw floor)")
    kinfo: dict[str, list[float]] = {lib: [] for lib in (*LIBS, "raw")}
    exe: dict[str, list[float]] = {lib: [] for lib in (*LIBS, "raw")}
    with one_kernel_each() as kernels:
        raw = RawShell(kernels["jc"][0])
        try:
            calls: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
                lib: _client_calls(kernels[lib][1]) for lib in LIBS
            }
            calls["raw"] = (
                lambda: raw.request("kernel_info_request", {}),
                lambda: raw.request("execute_request", EXECUTE_1P1),
            )
            for who in calls:  # warm-up
                for _ in range(10):
                    calls[who][0]()
                    calls[who][1]()
            for lib in LIBS:
                drain(kernels[lib][1])
            for i, order in orders(p.calls):
                alive(f"round trips, call {i + 1}")
                rotation = (*order, "raw") if i % 2 else ("raw", *order)
                for who in rotation:
                    t0 = time.perf_counter()
                    r = calls[who][0]()
                    kinfo[who].append(ms(time.perf_counter() - t0))
                    assert r["msg_type"] == "kernel_info_reply", r["msg_type"]
                for who in rotation:
                    t0 = time.perf_counter()
                    r = calls[who][1]()
                    exe[who].append(ms(time.perf_counter() - t0))
                    assert r["content"]["status"] == "ok", r["content"]
                if i % 50 == 49:  # keep the unread iopub traffic bounded (untimed)
                    for lib in LIBS:
                        drain(kernels[lib][1])
        finally:
            raw.close()
    rows = [
        Row(
            "roundtrip",
            "kernel_info round trip",
            "ms",
            kinfo["kk"],
            kinfo["jc"],
            "≤ 1.0",
            "ratio<=1.0",
        ),
        Row(
            "roundtrip", "kernel_info round trip p99", "ms", [p99(kinfo["kk"])], [p99(kinfo["jc"])]
        ),
        Row(
            "roundtrip",
            "floor: kernel_info, raw pyzmq DEALER (no client)",
            "ms",
            kinfo["raw"],
            None,
            jc_text="(same floor)",
        ),
        Row(
            "roundtrip",
            'execute("1+1") round trip (shell reply)',
            "ms",
            exe["kk"],
            exe["jc"],
            "≤ 0.95",
            "ratio<=0.95",
        ),
        Row("roundtrip", 'execute("1+1") round trip p99', "ms", [p99(exe["kk"])], [p99(exe["jc"])]),
        Row(
            "roundtrip",
            'floor: execute("1+1"), raw pyzmq DEALER (no client)',
            "ms",
            exe["raw"],
            None,
            jc_text="(same floor)",
        ),
    ]
    for what, times in (("kernel_info", kinfo), ('execute("1+1")', exe)):
        # Paired: each call minus the raw call of the same rotation.
        over = {
            lib: [(a - b) * 1000 for a, b in zip(times[lib], times["raw"], strict=True)]
            for lib in LIBS
        }
        rows.append(
            Row(
                "roundtrip",
                f"{what}: client overhead over the raw floor (paired)",
                "µs",
                over["kk"],
                over["jc"],
                show_ratio=False,
            )
        )
    for r in rows:
        r.extra["calls"] = p.calls
    return rows

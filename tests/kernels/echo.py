"""Test kernel: echoes the code it is asked to execute (no Python is run).

The minimal "echo" kernel of the Jupyter docs, on ipykernel's ``Kernel`` base:
``execute_request`` sends the code back as a ``stream`` (stdout) output, unless
silent, and replies ``ok``; the other requests get ipykernel's default
replies. jupyter_client's own client tests use a kernelspec named ``echo``.
No environment variables.

Usage: python echo.py -f <connection_file>
"""

from __future__ import annotations

from typing import Any


def main() -> None:
    # Imported here: importing this script must not import ipykernel or zmq.
    from ipykernel.kernelapp import IPKernelApp
    from ipykernel.kernelbase import Kernel

    class EchoKernel(Kernel):
        implementation = "echo"
        implementation_version = "1.0"
        language = "echo"
        language_version = "0.1"
        language_info = {"name": "echo", "mimetype": "text/plain", "file_extension": ".txt"}
        banner = "Echo kernel: echoes the code it gets"

        async def do_execute(
            self,
            code: str,
            silent: bool,
            store_history: bool = True,
            user_expressions: Any = None,
            allow_stdin: bool = False,
            *,
            cell_meta: Any = None,
            cell_id: Any = None,
        ) -> dict[str, Any]:
            if not silent:
                self.send_response(self.iopub_socket, "stream", {"name": "stdout", "text": code})
            return {
                "status": "ok",
                "execution_count": self.execution_count,
                "payload": [],
                "user_expressions": {},
            }

    IPKernelApp.launch_instance(kernel_class=EchoKernel)


if __name__ == "__main__":
    main()

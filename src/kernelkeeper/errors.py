"""The one exception tree of kernelkeeper.

Every error the library raises on purpose derives from :class:`KernelError`.
Where a caller would naturally catch a builtin (``LookupError`` for an unknown
name, ``TimeoutError`` for a deadline, ``ValueError`` for bad input), the
subclass derives from that builtin too, so ``except TimeoutError`` keeps
working for code that knows nothing of kernelkeeper.

Every builtin each class is also, and why (code written for jupyter_client
catches what jupyter_client raises):

=============================  ==============================================
``KernelSpecError``            ``ValueError`` (a kernel.json that cannot be used)
``KernelExecutableNotFound``   ``KernelSpecError``, ``KernelStartError`` and
                               ``FileNotFoundError``: jupyter_client's launch
                               raises FileNotFoundError for a missing argv[0]
``NoSuchKernel``               ``LookupError`` (jupyter_client's is a
                               KeyError, so ``except LookupError`` fits both)
``KernelStartError``           ``RuntimeError``
``KernelDiedError``            ``KernelStartError``, so ``RuntimeError``
                               (jupyter_client: "Kernel died before replying")
``KernelTimeoutError``         ``TimeoutError``
``KernelNotReadyError``        ``KernelTimeoutError`` and ``RuntimeError``:
                               jupyter_client's ``wait_for_ready`` raises
                               RuntimeError on its timeout, and nbclient and
                               papermill catch that
``NotRunningError``            ``RuntimeError``
``MessageError``               ``ValueError``
``LifecycleError``             ``RuntimeError``
``ConfigurationError``         ``ValueError``
``ConnectionFileError``        ``ValueError``
``ConnectionFileNotFound``     ``ConnectionFileError`` and ``FileNotFoundError``
                               (jupyter_client's ``find_connection_file``
                               raises OSError)
``RuntimeDirError``            ``OSError``
``NoSuchKernelId``             ``KeyError`` (jupyter_client's multi-kernel
                               manager raises KeyError for an unknown id)
``KernelLimitError``           ``RuntimeError``
``DuplicateKernelError``       ``ValueError``
``InteropNotSupported``        ``NotImplementedError``: a jupyter_client name
                               the interop classes do not run
=============================  ==============================================
"""

from __future__ import annotations

import errno as _errno
import signal as _signal

__all__ = [
    "ConfigurationError",
    "ConnectionFileError",
    "ConnectionFileNotFound",
    "DuplicateKernelError",
    "InteropNotSupported",
    "KernelDiedError",
    "KernelError",
    "KernelExecutableNotFound",
    "KernelLimitError",
    "KernelNotReadyError",
    "KernelSpecError",
    "KernelStartError",
    "KernelTimeoutError",
    "LifecycleError",
    "MessageError",
    "NoSuchKernel",
    "NoSuchKernelId",
    "NotRunningError",
    "RuntimeDirError",
]


class KernelError(Exception):
    """Root of every error kernelkeeper raises."""


class KernelSpecError(KernelError, ValueError):
    """A kernel.json that cannot be used: unreadable, malformed, missing argv."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(f"{message} ({path})" if path else message)
        self.path = path


class NoSuchKernel(KernelError, LookupError):
    """No kernel type of that name is known; ``available`` lists the ones that are."""

    def __init__(self, name: str, available: list[str] | None = None) -> None:
        self.name = name
        self.available = sorted(available or [])
        listing = ", ".join(self.available) or "none"
        super().__init__(f"No such kernel: {name!r}. Available: {listing}")

    def __str__(self) -> str:  # LookupError would repr() the args otherwise
        return str(self.args[0])


class KernelStartError(KernelError, RuntimeError):
    """The kernel could not be started: missing executable, bad arguments, ..."""


class KernelExecutableNotFound(KernelSpecError, KernelStartError, FileNotFoundError):
    """A kernel.json whose ``argv[0]`` does not exist (not on PATH, or no such file).

    A :class:`KernelSpecError` (so a ``ValueError``) with the kernel.json's
    ``path`` (None for a spec given directly), a :class:`KernelStartError` (the
    kernel could not be started) and a ``FileNotFoundError`` (``errno``
    ENOENT), which is what exec'ing it raises and what jupyter_client
    raises; ``executable`` names the missing argv[0].
    """

    def __init__(self, message: str, path: str | None = None, executable: str = "") -> None:
        super().__init__(message, path)
        self.executable = executable
        self.errno = _errno.ENOENT  # no strerror, so str() stays the message


class KernelDiedError(KernelStartError):
    """The kernel process exited while we were waiting on it.

    ``exit_code`` is the process's return code (negative for a signal) and
    ``stderr_tail`` the last lines it wrote to stderr, when we captured them.
    """

    def __init__(self, message: str, exit_code: int | None = None, stderr_tail: str = "") -> None:
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        #: The signal that killed the kernel (from a negative exit code), else None.
        self.signal: int | None = -exit_code if exit_code is not None and exit_code < 0 else None
        full = message
        if self.signal is not None:
            full += f" (killed by {_signal_name(self.signal)})"
        elif exit_code is not None:
            full += f" (exit code {exit_code})"
        if stderr_tail.strip():
            full += "\n--- kernel stderr (tail) ---\n" + stderr_tail.rstrip()
        super().__init__(full)


class KernelTimeoutError(KernelError, TimeoutError):
    """A deadline passed: no reply, not ready, did not exit."""


class KernelNotReadyError(KernelTimeoutError, RuntimeError):
    """``wait_for_ready`` gave up: the kernel did not answer in time.

    Also a ``RuntimeError``, which is what jupyter_client raises there (and
    what nbclient and papermill catch).
    """


class NotRunningError(KernelError, RuntimeError):
    """The operation needs a running kernel (or open channels) and there is none."""


class MessageError(KernelError, ValueError):
    """A wire message that cannot be parsed or whose signature does not verify."""


class LifecycleError(KernelError, RuntimeError):
    """A lifecycle call that does not fit the kernel's state (start on a running kernel, ...)."""


class ConfigurationError(KernelError, ValueError):
    """An option with a value that cannot work (an unknown policy, a bad combination)."""


class ConnectionFileError(KernelError, ValueError):
    """A connection file that cannot be used; names the file and the offending field."""

    def __init__(self, message: str, path: str | None = None, field: str | None = None) -> None:
        where = f" ({path})" if path else ""
        super().__init__(f"{message}{where}")
        self.path = path
        self.field = field


class ConnectionFileNotFound(ConnectionFileError, FileNotFoundError):
    """No connection file matches (``find_connection_file``); ``path`` is the
    name or pattern asked for. Also the ``OSError`` jupyter_client raises."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message, None, None)
        self.path = path
        self.errno = _errno.ENOENT


class RuntimeDirError(KernelError, OSError):
    """Jupyter's runtime directory cannot be used (a file, unwritable, ...).

    The message names the path and the environment variable that moves it.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class NoSuchKernelId(KernelError, KeyError):
    """No kernel with this id is managed here; ``kernel_id`` names it."""

    def __init__(self, kernel_id: str) -> None:
        self.kernel_id = kernel_id
        super().__init__(f"Kernel with id not found: {kernel_id}")

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0])


class KernelLimitError(KernelError, RuntimeError):
    """``max_kernels`` or a per-type limit is reached; no kernel was started."""


class DuplicateKernelError(KernelError, ValueError):
    """A kernel with the requested kernel_id already exists."""


class InteropNotSupported(KernelError, NotImplementedError):
    """A jupyter_client name the interop classes
    (:mod:`kernelkeeper.jupyter_client_interop`) do not run: jupyter_client
    machinery (provisioner hooks, port reservation, traitlets factories) with
    no kernelkeeper counterpart."""


def _signal_name(signum: int) -> str:
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"

"""Run the suite with kernels forked from fork-server templates.

``tests/conftest.py`` loads this plugin whenever the fork server is on, which
is the default (``KERNELKEEPER_FORKSERVER=0`` runs the suite with every
kernel spawned instead; ``-p tests.forkserver_plugin`` forces it on). The
templates of the default kernels (``python3`` and the default kernel type)
are started once, before the first test, so that every start of those
kernels is forked, the first in a test included; they predate every test,
so the suite's leak check does not count them. A template a test brings up
itself (for a kernelspec of its own) is closed after that test, before the
leak check, and one a test closed is started again before the next test.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernelkeeper import forkserver
from kernelkeeper.finder import default_finder
from kernelkeeper.launch import prepare_fork_server

_session_templates: set[int] = set()


def pytest_configure(config: pytest.Config) -> None:
    os.environ[forkserver.ENV_VAR] = "1"


def _prepare() -> None:
    async def prepare() -> None:
        finder = default_finder()
        for name in ("python3", None):
            await prepare_fork_server(finder.get_spec(name))

    asyncio.run(prepare())
    _session_templates.clear()
    _session_templates.update(t["pid"] for t in forkserver.templates())


@pytest.fixture(scope="session", autouse=True)
def _default_templates() -> Iterator[None]:
    _prepare()
    yield
    forkserver.shutdown_templates(timeout=30)


@pytest.fixture(autouse=True)
def _revive_templates() -> None:
    # Set up before the suite's own fixtures (plugin fixtures come first), so a
    # template revived here predates the test. A test may have closed them.
    alive = {t["pid"] for t in forkserver.templates()}
    if alive != _session_templates:
        forkserver.shutdown_templates(timeout=30)
        _prepare()


@pytest.fixture(autouse=True)
def _close_templates(_revive_templates: None, isolated_runtime: Path) -> Iterator[None]:
    # Depends on isolated_runtime so that this runs before its leak check.
    yield
    forkserver.shutdown_templates(timeout=30, keep=_session_templates)

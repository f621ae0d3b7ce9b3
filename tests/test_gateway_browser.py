"""A real browser: JupyterLab 4 in headless Chromium, its kernels on the gateway under test.

JupyterLab is served by jupyter_server in gateway mode pointed at the gateway;
Debian's Chromium (/usr/bin/chromium) is driven by selenium through Debian's
chromium-driver (/usr/bin/chromedriver), so nothing is downloaded. The test
opens a notebook, runs its cell and waits for the output in the page; every
wait is a DOM condition with a deadline.

Without Chromium the test skips, except under ``CI=true``, where it fails:
``.ci/setup-chromium.sh`` installs both packages on a fresh machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from gateway_harness import (
    Gateway,
    JupyterServer,
    descendants,
    gateway_kind,
    reap,
    start_gateway,
    start_jupyter_server,
    wait_procs_gone,
)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_TIMEOUT = 120.0  # JupyterLab's first load in headless Chromium on 2 busy cores
CELL_TIMEOUT = 60.0
NOTEBOOK = "gateway.ipynb"


def missing(reason: str) -> None:
    """Skip outside CI; under CI a missing browser is a failure, not a silent skip."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: run .ci/setup-chromium.sh as root)", pytrace=False)
    pytest.skip(reason)


def require_browser() -> None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            missing(f"{path} is missing (Debian packages chromium and chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("selenium is not installed")
    if importlib.util.find_spec("jupyterlab") is None:
        missing("jupyterlab is not installed")


def write_notebook(root: Path) -> None:
    cell: dict[str, Any] = {
        "cell_type": "code",
        "execution_count": None,
        "id": "c0ffee00",
        "metadata": {},
        "outputs": [],
        "source": ["print(6*7)"],
    }
    nb = {
        "cells": [cell],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (root / NOTEBOOK).write_text(json.dumps(nb))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Gateway, JupyterServer]]:
    """The gateway under test and jupyter_server (JupyterLab) in gateway mode."""
    require_browser()
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root)
    gateway = start_gateway(gateway_kind(), tmp_path / "gw-rt")
    try:
        server = start_jupyter_server(
            gateway,
            root,
            tmp_path / "js-rt",
            # No calls to the outside world from the page or the server.
            extra_args=["--LabApp.news_url=", "--LabApp.check_for_updates_class="
                        "jupyterlab.NeverCheckForUpdate"],
        )  # fmt: skip
    except BaseException:
        gateway.stop()
        raise
    try:
        yield gateway, server
    finally:
        report = server.stop() + gateway.stop()
        assert not report, "\n".join(report)


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """Headless Chromium under chromedriver; on exit both end, with every child."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where the sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-crash-reporter",
        "--disable-breakpad",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER, log_output=os.devnull)
    driver = webdriver.Chrome(service=service, options=options)
    driver_pid = service.process.pid
    try:
        yield driver
    finally:
        procs = [psutil.Process(driver_pid), *descendants(driver_pid)]
        try:
            driver.quit()
        finally:
            alive = wait_procs_gone(procs, 30.0)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            wait_procs_gone(alive, 10.0)
            reap(procs)
        assert not alive, f"browser processes left after quit: {[p.pid for p in alive]}"


def page_state(driver: Any, shot: Path) -> str:
    """What the page shows, for a failure message (and a screenshot at ``shot``)."""
    from selenium.webdriver.common.by import By

    with contextlib.suppress(Exception):
        driver.save_screenshot(str(shot))

    def texts(css: str) -> list[str]:
        return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]

    status = [
        e.get_attribute("data-status")
        for e in driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator")
    ]
    return (
        f"prompts {texts('.jp-InputPrompt')}, outputs {texts('.jp-OutputArea-output')}, "
        f"kernel status {status}, dialogs {texts('.jp-Dialog')}; screenshot {shot}"
    )


# Above pytest's default: the deadlines below should be what fails, with their message.
@pytest.mark.timeout(420)
def test_jupyterlab_runs_a_cell_in_chromium(
    lab: tuple[Gateway, JupyterServer], tmp_path: Path
) -> None:
    """Open a notebook in JupyterLab, run its cell, and see the output in the page."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    gateway, server = lab
    before = {p.pid for p in gateway.server.descendants()}
    with chromium(tmp_path / "profile") as driver:

        def until(what: str, timeout: float, cond: Any, poll: float = 0.1) -> Any:
            try:
                wait = WebDriverWait(
                    driver,
                    timeout,
                    poll_frequency=poll,
                    ignored_exceptions=[StaleElementReferenceException],
                )
                return wait.until(cond)
            except TimeoutException:
                state = page_state(driver, tmp_path / "page.png")
                pytest.fail(
                    f"{what} within {timeout} s: {state}\njupyter_server:\n"
                    f"{server.server.tail(15)}\ngateway:\n{gateway.server.tail(15)}",
                    pytrace=False,
                )

        driver.get(f"{server.url}/lab/tree/{NOTEBOOK}?token={server.token}")
        # The notebook is open and its kernel (started on the gateway) is idle.
        idle = (By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator[data-status='idle']")
        until(
            "the notebook's kernel was not idle", PAGE_TIMEOUT, ec.presence_of_element_located(idle)
        )
        editor = (By.CSS_SELECTOR, ".jp-CodeCell .cm-content")
        prompt = (By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")

        def press_run(d: Any) -> bool:
            # JupyterLab may re-render the cell after its kernel connects, which can
            # eat a click or a key: press Shift+Enter in the cell until its prompt
            # says it was queued ("[*]:") or ran ("[1]:"), as a user would.
            if re.fullmatch(r"\[(\*|\d+)\]:", d.find_element(*prompt).text.strip()):
                return True
            cell = d.find_element(*editor)
            if "print(6*7)" not in cell.text:
                return False  # not rendered (yet, or again)
            cell.click()
            ActionChains(d).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
            return False

        t0 = time.monotonic()
        # Look again only after a while: a second press re-runs a cell that did run.
        until("the cell could not be run", CELL_TIMEOUT, press_run, poll=3.0)
        output = (By.CSS_SELECTOR, ".jp-CodeCell .jp-OutputArea-output")
        until(
            "the cell's output did not appear in the page",
            CELL_TIMEOUT,
            ec.text_to_be_present_in_element(output, "42"),
        )
        assert time.monotonic() - t0 < 2 * CELL_TIMEOUT
        assert driver.find_element(*output).text.strip() == "42"
        assert re.fullmatch(r"\[\d+\]:", driver.find_element(*prompt).text.strip())
        # The kernel runs under the gateway, not under jupyter_server.
        assert {p.pid for p in gateway.server.descendants()} - before
        assert not server.server.descendants()

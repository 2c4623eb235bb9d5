"""A real Chromium (the system's, from Debian's `chromium` package) driven by Playwright.

Playwright's own browser download cannot work on these machines: the tests use
``/usr/bin/chromium`` (or ``$LAYERWATCH_CHROMIUM``). Without it they skip,
unless ``LAYERWATCH_REQUIRE_BROWSER`` is set, as CI does: there they fail.

The pages are tested on SQLite only: the JSON API under them is tested on both
databases, and a browser pass per backend would double the slowest tests.
Every page fixture fails its test on any JavaScript error or console error.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from auth_headers import SUITE_TOKEN
from layerwatch_server.api.auth import SESSION_COOKIE

playwright_api = pytest.importorskip("playwright.sync_api")

ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip
DOCS = Path(__file__).resolve().parents[3] / "docs"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    dropped = [i for i in items if i.path.is_relative_to(here) and "[postgres" in i.nodeid]
    if dropped:
        items[:] = [i for i in items if i not in dropped]
        config.hook.pytest_deselected(items=dropped)


def _chromium() -> str | None:
    return os.environ.get("LAYERWATCH_CHROMIUM") or shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One browser per module: Playwright's sync API runs an event loop on this thread
    while it is open, which a later test's own `asyncio.run` may not share."""
    executable = _chromium()
    if executable is None:
        if os.environ.get("LAYERWATCH_REQUIRE_BROWSER"):
            pytest.fail("no chromium: install Debian's `chromium` package")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=ARGS)
        yield browser
        browser.close()


class Problems(list[str]):
    """JavaScript errors and console errors seen by a page."""


@pytest.fixture
def open_page(browser):  # type: ignore[no-untyped-def]
    """``open_page(base_url, signed_in=True)``: a fresh browser context's page, logged in
    with the suite's token unless told otherwise; console errors fail the test."""
    contexts = []
    problems = Problems()

    def make(base_url: str, *, signed_in: bool = True):  # type: ignore[no-untyped-def]
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        if signed_in:
            context.add_cookies([{
                "name": SESSION_COOKIE, "value": SUITE_TOKEN, "url": base_url,
                "httpOnly": True, "sameSite": "Strict",
            }])  # fmt: skip
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" else None,
        )  # fmt: skip
        return page

    yield make
    for context in contexts:
        context.close()
    assert not problems, problems


@pytest.fixture(scope="session")
def screenshot():  # type: ignore[no-untyped-def]
    """``screenshot(page, name)`` keeps a picture of the page in docs/ (the README shows
    them) when asked to: ``LAYERWATCH_SCREENSHOTS=1 pytest tests/server/dashboard``."""

    def keep(page, name: str) -> None:  # type: ignore[no-untyped-def]
        if os.environ.get("LAYERWATCH_SCREENSHOTS"):
            DOCS.mkdir(exist_ok=True)
            page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)

    return keep

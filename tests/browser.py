"""A self-contained HTML page opened in headless Chromium driven by Playwright, for the report tests.

Playwright drives the system's Chromium (Debian's `chromium` package, which `.ci/run` installs), so
nothing is downloaded; without one the tests that need it are skipped with NO_CHROMIUM.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "no Chromium on PATH: install it (Debian: apt-get install -y chromium; .ci/run does)"
# Playwright adds --headless and the --user-data-dir it is given. The network is closed: every
# background fetch Chromium would try is switched off rather than left to time out.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The table under each <h2>, by the heading's text: {a body row's first cell: its other cells}.
TABLES_JS = """() => Object.fromEntries([...document.querySelectorAll('h2 + table')].map(table => [
    table.previousElementSibling.textContent,
    Object.fromEntries([...table.tBodies[0].rows].map(row => {
        const [first, ...rest] = [...row.cells].map(cell => cell.textContent);
        return [first, rest];
    })),
]))"""


@dataclass(frozen=True)
class LoadedPage:
    problems: list[str]  # console errors, page errors and failed requests
    images: list[list[Any]]  # [alt, complete, natural width] of each <img>, in page order
    tables: dict[str, dict[str, list[str]]]  # see TABLES_JS


def load_in_chromium(page: Path, profile: Path) -> LoadedPage:
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            tab = browser.new_page()
            tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda error: problems.append(str(error)))
            tab.on("requestfailed", lambda request: problems.append(f"failed: {request.url[:80]}"))
            tab.goto(page.as_uri(), wait_until="load")
            images = tab.evaluate("[...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
            tables = tab.evaluate(TABLES_JS)
        finally:
            browser.close()
    return LoadedPage(problems, images, tables)

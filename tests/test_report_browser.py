"""report.html opened in a real browser, headless Chromium driven by Playwright: the page loads without
console errors, every image decodes and the summary shows the accuracy evaluation-test.json holds.

Playwright drives the system's Chromium (Debian's `chromium` package, which `.ci/run` installs), so
nothing is downloaded; without one the test is skipped.
"""

from __future__ import annotations

import json
import shutil

import pytest
from run_dirs import tiny_run

from fertrain.predict import BUNDLED_MODEL
from fertrain.report import build_report

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def report_html(tmp_path_factory, prepared_sample):
    """The report `make demo` writes: a run's, with the bundled model compared on the same faces."""
    run_dir = tmp_path_factory.mktemp("browser") / "run"
    shutil.copytree(tiny_run(tmp_path_factory.getbasetemp(), prepared_sample), run_dir)
    return build_report(run_dir, compare=[BUNDLED_MODEL]).html


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_report_loads_in_chromium_with_every_image_decoded(report_html, tmp_path):
    from playwright.sync_api import sync_playwright

    problems = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("requestfailed", lambda request: problems.append(f"failed: {request.url[:80]}"))
            page.goto(report_html.as_uri(), wait_until="load")
            images = page.evaluate("[...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
            tables = page.evaluate(TABLES_JS)
        finally:
            browser.close()

    assert problems == []
    titles = ["Training curves", "Confusion matrix (test)", "Reliability diagram (test)"]
    assert [alt for alt, _, _ in images][:3] == titles
    assert len(images) == 5 and images[4][0].startswith("Grad-CAM per class (test)")
    assert all(complete and width > 0 for _, complete, width in images), images
    evaluation = json.loads((report_html.parent / "evaluation-test.json").read_text())
    accuracy = f"{evaluation['accuracy']:.4f}"
    assert tables["Summary"]["test accuracy"] == [accuracy]
    run_label, bundled_label = tables["Compared on the same images"]
    assert run_label.startswith("tiny0 (") and bundled_label == "bundled model"
    assert tables["Compared on the same images"][run_label][0] == accuracy

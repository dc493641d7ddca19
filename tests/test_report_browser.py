"""report.html opened in a real browser, headless Chromium driven by Playwright: the page loads without
console errors, every image decodes and the summary shows the accuracy evaluation-test.json holds.

Without a Chromium on PATH the test is skipped (tests/browser.py).
"""

from __future__ import annotations

import json
import shutil

import pytest
from browser import CHROMIUM, NO_CHROMIUM, load_in_chromium
from run_dirs import tiny_run

from fertrain.predict import BUNDLED_MODEL
from fertrain.report import build_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report_html(tmp_path_factory, prepared_sample):
    """The report `make demo` writes: a run's, with the bundled model compared on the same faces."""
    run_dir = tmp_path_factory.mktemp("browser") / "run"
    shutil.copytree(tiny_run(tmp_path_factory.getbasetemp(), prepared_sample), run_dir)
    return build_report(run_dir, compare=[BUNDLED_MODEL]).html


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_report_loads_in_chromium_with_every_image_decoded(report_html, tmp_path):
    loaded = load_in_chromium(report_html, tmp_path / "profile")
    problems, images, tables = loaded.problems, loaded.images, loaded.tables

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

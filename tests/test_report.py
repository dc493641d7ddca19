"""`fertrain report`: a self-contained HTML page and a Markdown twin with the run's real numbers."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest
from cli_main import run_cli
from run_dirs import tiny_model_file, tiny_run

from fertrain.evaluation import Evaluation, evaluate
from fertrain.predict import BUNDLED_MODEL
from fertrain.report import most_confident_mistakes

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, prepared_sample):
    return tiny_run(tmp_path_factory.getbasetemp(), prepared_sample)


def test_report_is_self_contained_and_shows_the_runs_numbers(run_dir, capsys, monkeypatch):
    code, out, err = run_cli(["report", run_dir], capsys, monkeypatch)
    assert code == 0, err
    assert f"wrote {run_dir / 'report.html'}" in out
    page = (run_dir / "report.html").read_text()
    markdown = (run_dir / "report.md").read_text()

    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    titles = ["Training curves", "Confusion matrix (test)", "Reliability diagram (test)"]
    assert [title for title, _ in images][:3] == titles
    assert len(images) == 5 and images[4][0].startswith("Grad-CAM per class (test)")
    for _, data in images:
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not fetch anything"
    assert "<script" not in page and "<link" not in page
    assert "Compared on the same images" not in page + markdown  # only with --compare

    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluation = json.loads((run_dir / "evaluation-test.json").read_text())
    wrong = evaluation["num_images"] - round(evaluation["accuracy"] * evaluation["num_images"])
    expected = [
        f"{run_metrics['best_val_accuracy']:.4f}",
        f"{run_metrics['best_val_loss']:.4f}",
        f"{run_metrics['wall_time_s']:.4f}",
        "time_s.compile",  # where the wall time went
        f"{run_metrics['time_s']['compile']:.4f}",
        f"{run_metrics['train_images_per_s']:.4f}",
        run_metrics["versions"]["tensorflow"],
        run_metrics["backend"],
        f"{evaluation['accuracy']:.4f}",
        f"{evaluation['macro_f1']:.4f}",
        f"{evaluation['ece']:.4f}",
        f"{evaluation['per_class'][0]['recall']:.4f}",
        f"The {min(24, wrong)} most confident mistakes (test)",
        "name: tiny0",  # the resolved config
    ]
    for text in expected:
        assert text in page, text
        assert text in markdown, text
    for linked in re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown):
        assert (run_dir / linked).read_bytes().startswith(PNG_MAGIC)


def test_compared_models_are_scored_on_the_same_faces(
    run_dir, prepared_sample, tmp_path_factory, capsys, monkeypatch
):
    other = tiny_model_file(tmp_path_factory.getbasetemp(), prepared_sample, seed=1)
    args = ["report", run_dir, "--data", prepared_sample, "--compare", BUNDLED_MODEL, "--compare", other]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    run, bundled, tiny = (
        evaluate([target], prepared_sample).summary for target in (run_dir, BUNDLED_MODEL, other)
    )
    wall = json.loads((run_dir / "metrics.json").read_text())["wall_time_s"]
    run_label = f"tiny0 ({run_dir}, trained in {wall:.0f} s)"
    assert out.splitlines()[-1] == (
        f"test accuracy on the same {run['num_images']} images: {run_label}: {run['accuracy']:.1%}"
        f" · bundled model: {bundled['accuracy']:.1%} · {other}: {tiny['accuracy']:.1%}"
    )
    page = (run_dir / "report.html").read_text()
    markdown = (run_dir / "report.md").read_text()
    for label, summary in ((run_label, run), ("bundled model", bundled), (str(other), tiny)):
        cells = [label] + [f"{summary[key]:.4f}" for key in ("accuracy", "top2_accuracy", "macro_f1")]
        assert "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>" in page
        assert "| " + " | ".join(cells) + " |" in markdown


def test_a_run_without_history_is_refused(run_dir, tmp_path, capsys, monkeypatch):
    broken = tmp_path / "broken-run"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("tensorboard", "history.csv", "report*"))
    code, _, err = run_cli(["report", broken], capsys, monkeypatch)
    assert code == 2
    assert f"{broken / 'history.csv'}: missing" in err
    assert not (broken / "report.html").exists()


def test_most_confident_mistakes_come_first():
    probabilities = np.full((5, 7), 0.1)
    rows = [(0, 0.4), (3, 0.4), (3, 0.9), (1, 0.4), (2, 0.7)]  # (predicted class, its probability)
    for row, (predicted, probability) in enumerate(rows):
        probabilities[row, predicted] = probability
    labels = np.array([0, 4, 5, 1, 6])  # rows 1, 2 and 4 are wrong
    evaluation = Evaluation({}, np.zeros((5, 48, 48), np.uint8), labels, probabilities, ())
    assert most_confident_mistakes(evaluation, 10).tolist() == [2, 4, 1]
    assert most_confident_mistakes(evaluation, 2).tolist() == [2, 4]

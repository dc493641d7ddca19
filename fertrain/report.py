"""`fertrain report`: a self-contained report.html (images embedded as base64) and report.md for a run.

The report shows training curves from history.csv, the evaluation of the run's model on a split
(confusion heatmap, reliability diagram, per-class table, the most confident mistakes, and per class
the mean Grad-CAM map over its right answers and the maps of its most confident mistakes), the
resolved config, and the environment and timings from metrics.json. Other models (`--compare`) are scored on
the same faces beside it, e.g. the model bundled with fertrain beside a run trained on the bundled
sample.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fertrain.config import load_config
from fertrain.errors import ModelError
from fertrain.evaluation import Evaluation, confusion_file, evaluate
from fertrain.fileio import write_atomic
from fertrain.inference import (
    RUN_CONFIG_FILE,
    RUN_HISTORY_FILE,
    RUN_METRICS_FILE,
    LoadedModel,
    load_classifier,
)
from fertrain.metrics import PER_CLASS_COLUMNS, SUMMARY_METRICS
from fertrain.plots import image_rows_png, mistakes_grid_png, reliability_png, training_curves_png
from fertrain.predict import BUNDLED_MODEL

CURVES_FILE = "report-curves.png"
RELIABILITY_FILE = "report-reliability.png"
GRADCAM_FILE = "report-gradcam.png"
GRADCAM_MISTAKES = 4  # per class, beside its mean map
MISTAKES_FILE = "report-mistakes.png"
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
COMPARISON_METRICS = (("accuracy", "accuracy"), ("top2_accuracy", "top-2 accuracy"), ("macro_f1", "macro F1"))
COMPARISON_COLUMNS = ("model", *(label for _, label in COMPARISON_METRICS))
COMPARISON_TITLE = "Compared on the same images"


@dataclass(frozen=True)
class ModelScore:
    label: str  # for people: the run's config name and training time, "bundled model" or the path
    summary: dict[str, Any]


@dataclass(frozen=True)
class Report:
    html: Path
    markdown: Path
    evaluation: Evaluation
    scores: tuple[ModelScore, ...]  # the run's, then each compared model's, all on the same faces


@dataclass(frozen=True)
class Figure:
    title: str
    file: str  # beside report.md, which links it; report.html embeds the bytes
    png: bytes


def read_history(run_dir: Path) -> pd.DataFrame:
    path = run_dir / RUN_HISTORY_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; {run_dir} is not a finished `fertrain train` run")
    try:
        history = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a readable CSV ({exc})") from None
    missing = [column for column in HISTORY_COLUMNS if column not in history]
    if missing or history.empty:
        raise ModelError(f"{path}: expected columns {', '.join(HISTORY_COLUMNS)} and one row per epoch")
    return history


def read_run_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_METRICS_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; {run_dir} is not a finished `fertrain train` run")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(metrics, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return metrics


def most_confident_mistakes(evaluation: Evaluation, count: int) -> np.ndarray:
    """Indices of wrongly classified images, the most confidently wrong first."""
    predicted = evaluation.probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != evaluation.labels)
    confidence = evaluation.probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _flatten(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", _format(value)))
    return rows


def _summary_rows(run_metrics: dict[str, Any], summary: dict[str, Any]) -> list[tuple[str, str]]:
    split = summary["split"]
    rows = [
        (key.replace("_", " "), _format(run_metrics[key]))
        for key in ("best_epoch", "best_val_accuracy", "best_val_loss", "epochs_run")
        if key in run_metrics
    ]
    rows.append((f"{split} images", str(summary["num_images"])))
    if summary["tta"] != "none":
        rows.append(("test-time augmentation", summary["tta"]))
    rows += [(f"{split} {label}", _format(summary[key])) for key, label in SUMMARY_METRICS]
    ferplus = summary.get("ferplus")
    if ferplus is not None:
        rows += [
            (
                f"{split} FER+ majority accuracy ({ferplus['majority_faces']} faces)",
                _format(ferplus["majority_accuracy"]),
            ),
            (
                f"{split} FER+ argmax accuracy ({ferplus['argmax_faces']} faces)",
                _format(ferplus["argmax_accuracy"]),
            ),
        ]
    return rows


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _run_label(run_dir: Path, config_path: Path, run_metrics: dict[str, Any]) -> str:
    wall = run_metrics.get("wall_time_s")
    trained = f", trained in {_duration(wall)}" if wall else ""
    return f"{load_config(config_path).name} ({run_dir}{trained})"


def _model_label(target: str | Path) -> str:
    return "bundled model" if Path(target).resolve() == BUNDLED_MODEL.resolve() else str(target)


def _comparison_rows(scores: Sequence[ModelScore]) -> list[tuple[str, ...]]:
    return [
        (score.label, *(_format(score.summary[key]) for key, _ in COMPARISON_METRICS)) for score in scores
    ]


def _per_class_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        (
            row["class"],
            _format(row["precision"]),
            _format(row["recall"]),
            _format(row["f1"]),
            str(row["support"]),
        )
        for row in summary["per_class"]
    ]


def _gradcam_figure(model: LoadedModel, evaluation: Evaluation) -> Figure:
    """Per class: the mean face and mean Grad-CAM map of the faces it got right, then its most
    confident mistakes (faces of other classes predicted as it), each with its map."""
    from fertrain.explain import GradCam, class_maps, heat_overlay

    def overlay(face: np.ndarray, heat: np.ndarray) -> np.ndarray:
        gray = np.round(face).astype(np.uint8)
        return heat_overlay(np.stack([gray] * 3, axis=-1), heat)

    rows = []
    summary = evaluation.summary
    for maps in class_maps(
        GradCam(model), evaluation.faces, evaluation.labels, evaluation.probabilities, GRADCAM_MISTAKES
    ):
        mean = (
            (None, "none right")
            if maps.mean_face is None
            else (
                overlay(maps.mean_face, maps.mean_map),
                f"mean of {maps.correct} right",
            )
        )
        wrong = [(overlay(face, heat), f"true {true}, {p:.2f}") for face, heat, true, p in maps.mistakes]
        rows.append((maps.name, [mean, *wrong]))
    title = (
        f"Grad-CAM per class ({summary['split']}): mean map of its right answers, "
        f"then its {GRADCAM_MISTAKES} most confident mistakes"
    )
    return Figure(title, GRADCAM_FILE, image_rows_png(rows, 1 + GRADCAM_MISTAKES))


def _figures(
    run_dir: Path, history: pd.DataFrame, model: LoadedModel, evaluation: Evaluation, mistakes: int
) -> list[Figure]:
    """The report's figures, in order; Grad-CAM's last, and only under TensorFlow, whose gradients it uses."""
    import keras

    summary = evaluation.summary
    split = summary["split"]
    chosen = most_confident_mistakes(evaluation, mistakes)
    names = summary["class_names"]
    predicted = evaluation.probabilities.argmax(axis=1)
    captions = [
        f"true {names[true]}\npred {names[guess]} {evaluation.probabilities[i, guess]:.2f}"
        for i, true, guess in zip(chosen, evaluation.labels[chosen], predicted[chosen], strict=True)
    ]
    confusion = confusion_file(run_dir, split)  # written by `evaluate` for the run directory
    figures = [
        Figure("Training curves", CURVES_FILE, training_curves_png(history)),
        Figure(f"Confusion matrix ({split})", confusion.name, confusion.read_bytes()),
        Figure(
            f"Reliability diagram ({split})",
            RELIABILITY_FILE,
            reliability_png(summary["reliability"], summary["ece"], f"{run_dir.name}: {split}"),
        ),
        Figure(
            f"The {len(chosen)} most confident mistakes ({split})",
            MISTAKES_FILE,
            mistakes_grid_png(evaluation.faces[chosen], captions),
        ),
    ]
    if keras.backend.backend() == "tensorflow":
        figures.append(_gradcam_figure(model, evaluation))
    return figures


def _html_table(header: tuple[str, ...] | None, rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header) if header else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table>{f'<thead><tr>{head}</tr></thead>' if head else ''}<tbody>{body}</tbody></table>"


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%}pre{background:#f5f5f5;padding:1em}"
)


@dataclass(frozen=True)
class _Content:
    title: str
    subtitle: str
    summary: list[tuple[str, str]]
    comparison: list[tuple[str, ...]]  # empty: nothing compared, no section
    per_class: list[tuple[str, ...]]
    figures: list[Figure]
    config: str
    environment: list[tuple[str, str]]


def _render_html(content: _Content) -> str:
    def figure(item: Figure) -> str:
        data = base64.b64encode(item.png).decode("ascii")
        title = html.escape(item.title)
        return f'<h2>{title}</h2><img alt="{title}" src="data:image/png;base64,{data}">'

    curves, confusion, reliability, mistakes, *explained = content.figures
    comparison = (
        [f"<h2>{COMPARISON_TITLE}</h2>", _html_table(COMPARISON_COLUMNS, content.comparison)]
        if content.comparison
        else []
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(content.title)}</title>',
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(content.title)}</h1><p>{html.escape(content.subtitle)}</p>",
            "<h2>Summary</h2>",
            _html_table(None, content.summary),
            *comparison,
            figure(curves),
            figure(confusion),
            figure(reliability),
            "<h2>Per class</h2>",
            _html_table(PER_CLASS_COLUMNS, content.per_class),
            figure(mistakes),
            *map(figure, explained),
            "<h2>Resolved config</h2>",
            f"<pre>{html.escape(content.config)}</pre>",
            "<h2>Environment and timings</h2>",
            _html_table(None, content.environment),
            "</body></html>",
        ]
    )


def _render_markdown(content: _Content) -> str:
    def figure(item: Figure) -> str:
        return f"## {item.title}\n\n![{item.title}]({item.file})"

    curves, confusion, reliability, mistakes, *explained = content.figures
    comparison = (
        [f"## {COMPARISON_TITLE}", _md_table(COMPARISON_COLUMNS, content.comparison)]
        if content.comparison
        else []
    )
    return (
        "\n\n".join(
            [
                f"# {content.title}",
                content.subtitle,
                "## Summary",
                _md_table(("metric", "value"), content.summary),
                *comparison,
                figure(curves),
                figure(confusion),
                figure(reliability),
                "## Per class",
                _md_table(PER_CLASS_COLUMNS, content.per_class),
                figure(mistakes),
                *map(figure, explained),
                "## Resolved config",
                f"```yaml\n{content.config.rstrip()}\n```",
                "## Environment and timings",
                _md_table(("item", "value"), content.environment),
            ]
        )
        + "\n"
    )


def build_report(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    split: str = "test",
    mistakes: int = 24,
    tta: str = "none",
    compare: Sequence[str | Path] = (),
) -> Report:
    """Evaluates the run's model, and each model in `compare`, on `split` (data defaults to the run's
    data.dir) and writes report.html, report.md and the figures report.md links into `run_dir`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: no such run directory")
    history = read_history(run_dir)
    run_metrics = read_run_metrics(run_dir)
    config_path = run_dir / RUN_CONFIG_FILE
    if not config_path.is_file():
        raise ModelError(f"{config_path}: missing; {run_dir} is not a `fertrain train` run")
    model = load_classifier(run_dir)
    evaluation = evaluate([model], data_dir, split=split, tta=tta)
    summary = evaluation.summary

    def score(target: str | Path) -> ModelScore:
        return ModelScore(
            _model_label(target), evaluate([target], summary["data_dir"], split=split, tta=tta).summary
        )

    scores = (ModelScore(_run_label(run_dir, config_path, run_metrics), summary),) + tuple(
        map(score, compare)
    )
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    content = _Content(
        title=f"fertrain report: {run_dir.name}",
        subtitle=f"Run directory {run_dir}; {split} split of {summary['data_dir']}; written {created}.",
        summary=_summary_rows(run_metrics, summary),
        comparison=_comparison_rows(scores) if compare else [],
        per_class=_per_class_rows(summary),
        figures=_figures(run_dir, history, model, evaluation, mistakes),
        config=config_path.read_text(encoding="utf-8"),
        environment=_flatten(run_metrics),
    )
    for item in content.figures:  # the confusion matrix rewrites identical bytes; simpler than a special case
        write_atomic(run_dir / item.file, item.png)
    markdown = write_atomic(run_dir / "report.md", _render_markdown(content))
    page = write_atomic(run_dir / "report.html", _render_html(content))
    return Report(page, markdown, evaluation, scores)

"""tune-report.html: a study's optimisation history, each parameter's effect on the objective and
the parameters' importances, self-contained like report.html (figures embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import math
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from fertrain.fileio import write_atomic
from fertrain.plots import _png, plt
from fertrain.report import _STYLE, _html_table
from fertrain.tuning.space import Param, yaml_text

if TYPE_CHECKING:
    from fertrain.tuning.study import TrialRow, TuneResult

TRIAL_COLUMNS = ("trial", "state", "params", "best value", "epochs", "time")
_MARKERS = {"complete": ("o", "tab:blue"), "pruned": ("x", "tab:grey")}


def short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return yaml_text(value)


def trial_cells(row: TrialRow) -> tuple[str, ...]:
    """A trial's cells under TRIAL_COLUMNS, for the report and the CLI's table."""
    params = ", ".join(
        f"{path.rsplit('.', 1)[-1]}={short_value(value)}" for path, value in row.params.items()
    )
    state = row.state if row.retry_of is None else f"{row.state} (retry of {row.retry_of})"
    return (
        str(row.number),
        state,
        params,
        "" if row.value is None else f"{row.value:.4f}",
        str(row.epochs),
        "" if row.seconds is None else f"{row.seconds:.0f} s",
    )


def importances(study) -> dict[str, float] | str:
    """Optuna's parameter importances of the complete trials (its default evaluator), or why there
    are none."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"needs at least 2 complete trials, the study has {len(complete)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:
        return f"not computable: {exc}"


def history_png(rows: Sequence[TrialRow], metric: str, direction: str) -> bytes:
    figure, axes = plt.subplots(figsize=(8, 4))
    for state, (marker, colour) in _MARKERS.items():
        chosen = [row for row in rows if row.state == state and row.value is not None]
        axes.scatter(
            [r.number for r in chosen], [r.value for r in chosen], marker=marker, c=colour, label=state
        )
    complete = sorted(
        (row.number, row.value) for row in rows if row.state == "complete" and row.value is not None
    )
    if complete:
        pick = np.maximum if direction == "maximize" else np.minimum
        best = pick.accumulate([value for _, value in complete])
        axes.step([number for number, _ in complete], best, where="post", c="tab:red", label="best so far")
    axes.set_xlabel("trial")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(f"best {metric} of the trial")
    axes.set_title("Optimisation history")
    axes.grid(alpha=0.3)
    if axes.has_data():
        axes.legend()
    return _png(figure)


def effects_png(rows: Sequence[TrialRow], params: Sequence[Param], metric: str) -> bytes:
    """One panel per parameter: each trial's value of it against the trial's best metric."""
    columns = min(3, len(params))
    lines = math.ceil(len(params) / columns)
    figure, grid = plt.subplots(lines, columns, figsize=(5 * columns, 3.6 * lines), squeeze=False)
    for axes, param in zip(grid.flat, params, strict=False):
        labels = [short_value(choice) for choice in param.choices]
        for state, (marker, colour) in _MARKERS.items():
            chosen = [
                row
                for row in rows
                if row.state == state and row.value is not None and param.path in row.params
            ]
            xs = [row.params[param.path] for row in chosen]
            if param.kind == "categorical":
                xs = [labels.index(short_value(x)) for x in xs]
            axes.scatter(xs, [row.value for row in chosen], marker=marker, c=colour, label=state)
        if param.kind == "categorical":
            axes.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        elif param.log:
            axes.set_xscale("log")
        axes.set_xlabel(param.path)
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
    for axes in list(grid.flat)[len(params) :]:
        axes.set_visible(False)
    figure.suptitle("Each parameter's effect")
    return _png(figure)


def importances_png(scores: dict[str, float]) -> bytes:
    names = list(scores)[::-1]  # the most important on top
    figure, axes = plt.subplots(figsize=(8, 0.5 + 0.5 * len(names)))
    axes.barh(names, [scores[name] for name in names], color="tab:blue")
    axes.set_xlabel("importance (share of the objective's variation)")
    axes.set_title("Parameter importances")
    axes.grid(alpha=0.3, axis="x")
    return _png(figure)


def _figure(title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'


def write_tune_report(result: TuneResult, study) -> None:
    """Writes result.report; figures need at least one trial with a value."""
    rows = result.trials
    best = result.best
    summary = [
        ("study", result.study),
        ("storage", result.storage),
        ("objective", f"{result.direction} the best {result.metric} of each trial"),
        *((state, str(count)) for state, count in result.to_dict()["counts"].items()),
        ("best trial", "none complete yet" if best is None else f"{best.number} ({best.run_dir})"),
        ("best value", "" if best is None else f"{best.value:.4f}"),
        ("best config", "" if result.best_config is None else str(result.best_config)),
    ]
    scores = importances(study)
    parts = [_figure("Optimisation history", history_png(rows, result.metric, result.direction))]
    if any(row.value is not None for row in rows):
        parts.append(
            _figure("Each parameter's effect", effects_png(rows, result.space.params, result.metric))
        )
    if isinstance(scores, dict):
        parts += [
            _figure("Parameter importances", importances_png(scores)),
            _html_table(("parameter", "importance"), [(k, f"{v:.3f}") for k, v in scores.items()]),
        ]
    else:
        parts.append(f"<h2>Parameter importances</h2><p>{html.escape(scores)}</p>")
    best_params = [] if best is None else [(path, yaml_text(value)) for path, value in best.params.items()]
    title = f"fertrain tune: {result.study}"
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<p>Study folder {html.escape(str(result.out))}; written {created}.</p>",
            "<h2>Summary</h2>",
            _html_table(None, summary),
            "<h2>Best parameters</h2>",
            _html_table(None, best_params) if best_params else "<p>No complete trial yet.</p>",
            *parts,
            "<h2>Trials</h2>",
            _html_table(TRIAL_COLUMNS, [trial_cells(row) for row in rows]),
            "</body></html>",
        ]
    )
    write_atomic(result.report, page)

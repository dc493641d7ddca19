"""`fertrain tune`: a hyperparameter search whose trials are run directories, on one machine or many."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Literal

import typer
from rich.live import Live
from rich.table import Table

from fertrain.cli.app import Command, ConfigOption, OverridesOption, app, console

TUNE_NOTES = (
    "Many machines: give each the same --config, --set, --space and --study, a --storage database "
    "URL they all reach (e.g. postgresql://user:password@dbhost/fertrain) and the prepared data "
    "(--data); each runs trials until the study has --trials complete or pruned ones. Rerunning the "
    "command continues the study; the trial of a stopped worker is retried from its last epoch. "
    "Exit codes: 0 done, 2 bad input (config, space, options, database URL), 4 never (a diverged "
    "trial fails alone), 5 the study folder cannot be written, 130 interrupted."
)


def _table(rows: Sequence, metric: str) -> Table:
    from fertrain.tuning.report import TRIAL_COLUMNS, trial_cells

    table = Table(title=f"trials ({metric})", title_justify="left")
    for column in TRIAL_COLUMNS:
        table.add_column(
            column, justify="right" if column in ("trial", "best value", "epochs", "time") else "left"
        )
    for row in rows:
        table.add_row(*trial_cells(row))
    return table


class _LiveTable:
    """The trial table redrawn in place on a terminal."""

    def __init__(self, metric: str):
        self.metric = metric
        self.live = Live(console=console, auto_refresh=False, transient=True)

    def trials_changed(self, rows) -> None:
        self.live.update(_table(rows, self.metric), refresh=True)


class _TrialLines:
    """One line per trial that ends: for logs and CI, where a redrawn table would be noise."""

    def __init__(self, metric: str):
        self.metric = metric
        self.done: set[int] = set()

    def trials_changed(self, rows) -> None:
        from fertrain.tuning.report import trial_cells

        for row in rows:
            if row.state in ("complete", "pruned", "failed") and row.number not in self.done:
                self.done.add(row.number)
                number, state, params, value, epochs, seconds = trial_cells(row)
                result = f"{self.metric} {value}, " if value else ""
                error = f": {row.error}" if row.error else ""
                plural = "" if epochs == "1" else "s"
                console.print(
                    f"trial {number} {state}{error}: {result}{epochs} epoch{plural}, {seconds}; {params}",
                    highlight=False,
                    soft_wrap=True,
                )


@app.command(cls=Command, epilog=TUNE_NOTES)
def tune(
    config: ConfigOption,
    space: Annotated[
        str,
        typer.Option(
            help="YAML search space: config paths (as in --set) to distributions, e.g. "
            "train.optimizer.learning_rate: {float: [0.0005, 0.01], log: true}, train.epochs: "
            "{int: [10, 30], step: 5}, model.entry_widths: {categorical: [[16, 32], [32, 64]]}.",
        ),
    ],
    overrides: OverridesOption = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: the config's name).")] = None,
    trials: Annotated[
        int, typer.Option(min=1, help="Complete or pruned trials the study ends with, over all workers.")
    ] = 20,
    timeout: Annotated[
        float | None, typer.Option(min=0.0, help="Start no trial after this many seconds.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Database several workers share (any SQLAlchemy URL Optuna supports, e.g. "
            "postgresql://user:password@host/db); default: SQLite study.db in the study folder.",
        ),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Prepared data directory (default: the config's data.dir).")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="Study folder: trial runs, best.yaml, tune-report.html (default: runs/tune/STUDY)."
        ),
    ] = None,
    metric: Annotated[
        Literal["val_accuracy", "val_loss", "accuracy", "loss"],
        typer.Option(
            help="history.csv column whose best epoch is a trial's value; pruning watches it per epoch."
        ),
    ] = "val_accuracy",
    direction: Annotated[
        Literal["maximize", "minimize"] | None,
        typer.Option(help="Default: minimize for a loss, else maximize."),
    ] = None,
    pruner: Annotated[
        Literal["median", "hyperband", "none"],
        typer.Option(
            help="median: stop a trial after an epoch worse than the median of earlier trials at that "
            "epoch (once 2 trials finished); hyperband: Optuna's Hyperband over epochs."
        ),
    ] = "median",
    min_epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Epochs every trial runs before the pruner may stop it (default: a third of the "
            "config's train.epochs, at least 1; a continued study: its own).",
        ),
    ] = None,
    sampler: Annotated[
        Literal["tpe", "random", "grid"],
        typer.Option(help="grid needs categorical values or a step for each float range."),
    ] = "tpe",
    seed: Annotated[
        int | None,
        typer.Option(help="Sampler seed: the same command on a new study suggests the same trials."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
) -> None:
    """Search hyperparameters with Optuna: every trial is a `fertrain train` run directory.

    Writes into the study folder one run directory per trial, best.yaml (the best complete trial's
    config, which `fertrain train --config` runs as is) and tune-report.html.
    """
    from fertrain.tuning import tune as run_tune

    reporter = None if json_output else (_LiveTable(metric) if console.is_terminal else _TrialLines(metric))
    live = reporter.live if isinstance(reporter, _LiveTable) else None
    if live is not None:
        live.start()
    try:
        result = run_tune(
            config,
            space,
            overrides=overrides or (),
            study=study,
            trials=trials,
            timeout=timeout,
            storage=storage,
            data_dir=data,
            out=out,
            metric=metric,
            direction=direction,
            pruner=pruner,
            min_epochs=min_epochs,
            sampler=sampler,
            seed=seed,
            reporter=reporter,
        )
    finally:
        if live is not None:
            live.stop()
    if json_output:
        console.print_json(json.dumps(result.to_dict()))
        return
    console.print(_table(result.trials, metric))
    ran = (
        f"this worker ran trials {', '.join(map(str, result.ran))}" if result.ran else "no trial left to run"
    )
    console.print(f"study {result.study} ({result.storage}): {ran}", highlight=False, soft_wrap=True)
    if result.failed_dead_workers:
        console.print(
            "failed the trials of stopped workers (queued again): "
            + ", ".join(map(str, result.failed_dead_workers)),
            highlight=False,
            soft_wrap=True,
        )
    best = result.best
    if best is None:
        console.print("no complete trial yet: no best.yaml", highlight=False)
    else:
        console.print(
            f"best: trial {best.number} ({result.out / best.run_dir}), {metric} {best.value:.4f}",
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"wrote {result.best_config}", highlight=False, soft_wrap=True)
    console.print(f"wrote {result.report}", highlight=False, soft_wrap=True)

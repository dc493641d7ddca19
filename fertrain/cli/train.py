"""`fertrain train`: a config into a run directory, or `--resume` an interrupted one."""

from __future__ import annotations

from typing import Annotated

import typer

from fertrain.cli.app import (
    Command,
    OverridesOption,
    app,
    console,
)

TRAIN_NOTES = (
    "Several machines: give each the same config with train.distribution=multi_worker and a TF_CONFIG "
    'such as {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
    '"index": 0}} (index 1 on host2); start them all; worker 0 writes the run directory.'
)


@app.command(cls=Command, epilog=TRAIN_NOTES)
def train(
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="YAML config file (not with --resume).")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Prepared data directory (default: the config's data.dir).")
    ] = None,
    overrides: OverridesOption = None,
    run_dir: Annotated[
        str | None, typer.Option(help="Run directory to create (default: runs/<config name>-<UTC time>/).")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(metavar="RUN_DIR", help="Continue an interrupted run from its last completed epoch."),
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            metavar="MODEL",
            help="Start from a trained model (bundled, a run directory or a model file): sets "
            "train.init_from; layers matching by name and shape are copied.",
        ),
    ] = None,
) -> None:
    """Train a model from `fertrain prepare` output into a run directory.

    The run directory gets config.yaml, model.keras (best val accuracy), last.keras, history.csv,
    metrics.json and tensorboard/. Exit codes: 0 done, 2 bad input, 4 training diverged (NaN loss),
    5 a run file could not be written (the message says how to continue with --resume).
    """
    import json

    from fertrain.config import load_config
    from fertrain.errors import ConfigError
    from fertrain.training import train as run_training
    from fertrain.training.progress import format_times, training_reporter

    if resume is not None and (overrides or init_from is not None):
        raise ConfigError("--resume continues a run with its own saved config; drop --set and --init-from")
    # Quoted as JSON, a YAML string whatever the path holds (": ", "#", a leading "[").
    sets = [
        *(overrides or ()),
        *([f"train.init_from={json.dumps(init_from)}"] if init_from is not None else []),
    ]
    loaded = load_config(config, sets) if config is not None else None
    reporter = training_reporter(console)
    try:
        result = run_training(loaded, data_dir=data, run_dir=run_dir, resume=resume, reporter=reporter)
    finally:
        reporter.close()
    for note in result.notes:
        console.print(note, highlight=False, soft_wrap=True)
    metrics = result.metrics
    if result.run_dir is None:
        return
    best = (
        f"best val accuracy {metrics['best_val_accuracy']:.4f} (val loss {metrics['best_val_loss']:.4f}) "
        f"at epoch {metrics['best_epoch']}/{metrics['epochs_run']}"
        if metrics["best_epoch"] is not None
        else "no finite validation accuracy"
    )
    early = ", stopped early" if metrics["stopped_early"] else ""
    speed = metrics["train_images_per_s"]
    console.print(
        f"{best}{early}; {metrics['wall_time_s']:.0f}s" + (f", {speed:,.0f} train images/s" if speed else ""),
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"time: {format_times(metrics['time_s'])}", highlight=False, soft_wrap=True)
    console.print(f"wrote {result.run_dir}", highlight=False, soft_wrap=True)

"""`fertrain evaluate`: metrics of a model or an ensemble on a prepared split."""

from __future__ import annotations

from typing import Annotated

import typer

from fertrain.cli.app import (
    Command,
    RunDataOption,
    TtaOption,
    app,
    console,
)
from fertrain.errors import BelowThresholdError
from fertrain.inference import Normalization

EVALUATE_EXIT_CODES = (
    "Exit codes: 0 when accuracy >= --min-accuracy (or none is given); "
    "3 when accuracy is below --min-accuracy; 2 on bad input (missing or unreadable model or data); "
    "5 when a result file cannot be written (no space, a path under a file, no permission)."
)


@app.command(cls=Command, epilog=EVALUATE_EXIT_CODES)
def evaluate(
    targets: Annotated[
        list[str],
        typer.Argument(
            metavar="TARGET...",
            help="Run directories or model files (.keras, .h5, SavedModel dir); "
            "several form an ensemble (mean probabilities).",
        ),
    ],
    data: RunDataOption = None,
    split: Annotated[str, typer.Option(help="Split to evaluate: train, val or test.")] = "test",
    tta: TtaOption = "none",
    normalize: Annotated[
        Normalization,
        typer.Option(
            help="Pixel scaling the model expects: raw 0-255 (fertrain models), unit x/255, "
            "symmetric x/127.5-1.",
        ),
    ] = "raw",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 256,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
    out: Annotated[str | None, typer.Option(help="Also write the JSON summary to this file.")] = None,
    min_accuracy: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Exit 3 when accuracy is below this.")
    ] = None,
) -> None:
    """Accuracy, top-2, loss, F1 and confusion matrix of a model or an ensemble on a prepared split.

    For a single run directory it also writes evaluation-SPLIT.json and confusion-SPLIT.png into it.
    """
    import json

    from fertrain.evaluation import evaluate as run_evaluation
    from fertrain.tables import evaluation_tables

    result = run_evaluation(
        targets, data, split=split, tta=tta, normalize=normalize, batch_size=batch_size, out=out
    )
    summary = result.summary
    if json_output:
        typer.echo(json.dumps(summary))
    else:
        for table in evaluation_tables(summary):
            console.print(table)
        for path in result.written:
            console.print(f"wrote {path}")
    if min_accuracy is not None and summary["accuracy"] < min_accuracy:
        accuracy = summary["accuracy"]
        raise BelowThresholdError(f"accuracy {accuracy:.4f} is below --min-accuracy {min_accuracy}")

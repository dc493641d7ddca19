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
    "Exit codes: 0 when every gate passes (or none is given); 3 when one fails: accuracy below "
    "--min-accuracy, or more than --max-drop (--per-class-max-drop) points below the --baseline model; "
    "2 on bad input (missing or unreadable model or data, a baseline with other classes); "
    "5 when a result or report file cannot be written (no space, a path under a file, no permission). "
    "The reports are written before the exit, also when a gate fails."
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
    baseline: Annotated[
        str | None,
        typer.Option(
            metavar="MODEL",
            help="Also score this model (run directory, model file or `bundled`) on the same faces with "
            "the same TTA, and compare: paired differences with 95% intervals and McNemar's exact test.",
        ),
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(
            metavar="POINTS",
            min=0.0,
            max=100.0,
            help="Exit 3 when accuracy is more than this many percentage points below the baseline's.",
        ),
    ] = None,
    per_class_max_drop: Annotated[
        float | None,
        typer.Option(
            metavar="POINTS",
            min=0.0,
            max=100.0,
            help="Exit 3 when any class's recall is more than this many points below the baseline's.",
        ),
    ] = None,
    junit_xml: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="Write a JUnit XML report: one test case per gate."),
    ] = None,
    markdown: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="Write a Markdown summary (e.g. to $GITHUB_STEP_SUMMARY)."),
    ] = None,
) -> None:
    """Accuracy, top-2, loss, F1 and confusion matrix of a model or an ensemble on a prepared split,
    optionally beside a baseline model and gated for CI.

    For a single run directory it also writes evaluation-SPLIT.json and confusion-SPLIT.png into it.
    """
    import json

    from fertrain.gate import Thresholds, evaluate_with_gates
    from fertrain.tables import comparison_table, evaluation_tables, gates_table

    result = evaluate_with_gates(
        targets,
        data,
        split=split,
        tta=tta,
        normalize=normalize,
        batch_size=batch_size,
        out=out,
        baseline=baseline,
        thresholds=Thresholds(min_accuracy, max_drop, per_class_max_drop),
        junit_path=junit_xml,
        markdown_path=markdown,
    )
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
    else:
        for table in evaluation_tables(result.evaluation.summary):
            console.print(table)
        if result.comparison is not None:
            console.print(comparison_table(result.comparison))
        if result.gates:
            console.print(gates_table(result.gates))
        for path in result.written:
            console.print(f"wrote {path}")
    if result.failed:
        failed = result.failed
        count = f"{len(failed)} of {len(result.gates)} gates failed: " if len(failed) > 1 else ""
        raise BelowThresholdError(count + "; ".join(gate.message for gate in failed))

"""`fertrain report`: a run's self-contained HTML and Markdown report."""

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


@app.command(cls=Command)
def report(
    run_dir: Annotated[
        str, typer.Argument(metavar="RUN_DIR", help="A run directory written by `fertrain train`.")
    ],
    data: RunDataOption = None,
    split: Annotated[str, typer.Option(help="Split the model is evaluated on: train, val or test.")] = "test",
    mistakes: Annotated[int, typer.Option(min=0, help="Most confident mistakes shown.")] = 24,
    tta: TtaOption = "none",
    compare: Annotated[
        list[str] | None,
        typer.Option(
            metavar="MODEL",
            help="Also score this run directory or model file on the same images (repeatable).",
        ),
    ] = None,
) -> None:
    """Write RUN_DIR/report.html (self-contained, images embedded) and RUN_DIR/report.md.

    They show training curves, the confusion matrix, the reliability diagram, per-class metrics, the
    most confident mistakes, per class the mean Grad-CAM map of its right answers and the maps of its
    most confident mistakes, the resolved config, and the environment and timings; with --compare, a
    table of the compared models beside the run's.
    """
    from fertrain.report import build_report

    result = build_report(run_dir, data, split=split, mistakes=mistakes, tta=tta, compare=compare or ())
    summary = result.evaluation.summary
    console.print(f"{split} accuracy {summary['accuracy']:.4f} on {summary['num_images']} images")
    console.print(f"wrote {result.html}")
    console.print(f"wrote {result.markdown}")
    if compare:
        scores = " · ".join(f"{score.label}: {score.summary['accuracy']:.1%}" for score in result.scores)
        console.print(
            f"{split} accuracy on the same {summary['num_images']} images: {scores}",
            highlight=False,
            soft_wrap=True,
        )

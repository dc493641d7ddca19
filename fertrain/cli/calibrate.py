"""`fertrain calibrate`: temperature scaling of a model's probabilities, saved inside the model."""

from __future__ import annotations

from typing import Annotated

import typer

from fertrain.cli.app import (
    Command,
    RunDataOption,
    app,
    console,
)
from fertrain.inference import Normalization


@app.command(cls=Command)
def calibrate(
    target: Annotated[
        str,
        typer.Argument(
            metavar="RUN_DIR|MODEL", help="A run directory, a .keras/.h5 file or a bundled model's name."
        ),
    ],
    data: RunDataOption = None,
    split: Annotated[
        str, typer.Option(help="Split the temperature is fitted on (val: FER2013's PublicTest).")
    ] = "val",
    normalize: Annotated[
        Normalization, typer.Option(help="Pixel scaling the model expects (see `evaluate --help`).")
    ] = "raw",
    out: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="The calibrated .keras model (default: RUN_DIR/calibrated.keras)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 256,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Fit one temperature T minimising the NLL of softmax(log p / T) on a split, and write the
    calibrated model (accuracy unchanged; T is saved in the model's output layer, so predict, evaluate
    and export use the calibrated probabilities). A run directory also gets calibration.json.
    """
    import json

    from fertrain.calibration import calibrate as fit
    from fertrain.tables import calibration_table

    result = fit(target, data, split=split, normalize=normalize, out=out, batch_size=batch_size)
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
        return
    console.print(calibration_table(result))
    for path in (result.model, result.record):
        if path is not None:
            console.print(f"wrote {path}", highlight=False)

"""`fertrain export`: a run or model file (or several, averaged) as SavedModel, TFLite, ONNX or .keras,
checked."""

from __future__ import annotations

from typing import Annotated

import typer

from fertrain.cli.app import (
    Command,
    RunDataOption,
    app,
    console,
)
from fertrain.errors import BelowThresholdError
from fertrain.export import ExportFormat, Quantization

EXPORT_EXIT_CODES = (
    "After exporting, the first 200 test images are run through the Keras model and through the export in "
    "every runtime installed that serves it (ONNX: onnxruntime and OpenCV's DNN module; TFLite: the TFLite "
    "interpreter): float exports must match within 1e-4 (max abs probability difference), float16 ones "
    "within 1e-2, int8 exports "
    "must agree on the top-1 emotion for >= 98% of them, in each runtime. Exit codes: 0 export written "
    "and check passed; 3 check failed, naming the runtime "
    "(the file is kept for inspection); 2 bad input or a missing optional dependency; 5 the export "
    "cannot be written (no space, a path under a file, no permission)."
)


@app.command(cls=Command, epilog=EXPORT_EXIT_CODES)
def export(
    targets: Annotated[
        list[str],
        typer.Argument(
            metavar="RUN_DIR|MODEL...",
            help="A run directory written by `fertrain train`, a .keras/.h5 model file (a calibrated "
            "one, say) or a bundled model's name (bundled, ferplus); several export as one model "
            "averaging their probabilities.",
        ),
    ],
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="Serving format (keras: one .keras file).")
    ],
    quantize: Annotated[
        Quantization | None,
        typer.Option(
            help="int8: weights and activations (tflite, onnx), calibrated on 200 training images; "
            "float16: weights stored in half the bytes, computed in float32 (keras, tflite)."
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(metavar="PATH", help="Output path (default: RUN_DIR/export/..., beside a model file)."),
    ] = None,
    data: RunDataOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    junit_xml: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="Write a JUnit XML report with the check as its test case."),
    ] = None,
) -> None:
    """Export a run's model or a model file (or several averaged) as a SavedModel, TFLite, ONNX or .keras
    file, then check it on the first test images (a model file outside a run: of --data)."""
    import json

    from fertrain.export import export_model

    result = export_model(
        targets, export_format, quantize=quantize, out=out, data_dir=data, junit_path=junit_xml
    )
    check = result.check
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
    else:
        kind = f"{result.format} ({result.quantize})" if result.quantize else result.format
        console.print(f"wrote {kind} to {result.path} ({result.size_bytes / 1e6:.2f} MB)")
        verdict = "[green]passed[/]" if check.passed else "[red]FAILED[/]"
        console.print(f"check on {check.images} {check.split} images: {check.criterion}: {verdict}")
        if junit_xml is not None:
            console.print(f"wrote {junit_xml}")
    if not check.passed:
        raise BelowThresholdError(f"export check failed: {check.criterion}; kept {result.path}")

"""Command-line interface: each command parses options, calls one library function, renders with rich.

Library code raises `FertrainError`s; `main` turns them, and any operating-system error on a file,
into one line on stderr and the error's exit code, never a traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated, Literal, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from fertrain import __version__
from fertrain.data.sources import SourceFormat
from fertrain.errors import BelowThresholdError, FertrainError, FileSystemError
from fertrain.export import ExportFormat, Quantization
from fertrain.fileio import removed_on_failure
from fertrain.inference import Normalization, TtaMode

UNEXPECTED_EXIT_CODE = 1  # Python's own code for an uncaught exception, which scripts already expect
EXIT_CODES = (
    "Exit codes of every command: 0 done; 1 unexpected error (a bug; one line naming a file with the "
    "traceback); 2 bad input (config, data, model, run directory); 3 below a threshold (evaluate "
    "--min-accuracy, the export check); 4 training diverged; 5 a file could not be written or read "
    "(no space, a path under a file, no permission, read-only file system); 130 interrupted."
)


class _FlagsTakeNoValue:
    """Typer 0.29's help shows flags such as --help and --json as `--json <bool>`, as if they took a
    value; its help prints a parameter's metavar instead of its type, so flags get an empty one."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params


class _Group(_FlagsTakeNoValue, TyperGroup):
    pass


class _Command(_FlagsTakeNoValue, TyperCommand):
    pass


app = typer.Typer(
    name="fertrain",
    cls=_Group,
    help="Train, evaluate and ship Xception-family facial-emotion classifiers on FER2013.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"fertrain {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train, evaluate and ship Xception-family facial-emotion classifiers on FER2013."""


ConfigOption = Annotated[str, typer.Option("--config", "-c", help="YAML config file.")]
OverridesOption = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY.PATH=VALUE", help="Override a config field (repeatable)."),
]
RunDataOption = Annotated[
    str | None, typer.Option("--data", help="Prepared data directory (default: the run's data.dir).")
]
TtaOption = Annotated[
    TtaMode,
    typer.Option(
        help="Test-time augmentation, probabilities averaged: none; flip (face + mirror); crops (face + 4 "
        "copies shifted diagonally: 3 px, or the margin of a model trained on random crops, which then "
        "sees its 4 corner crops and its centre crop); ten_crop (crops + the mirror of each).",
    ),
]
PREPARE_SOURCES = (
    "SOURCE: Kaggle's fer2013.csv (also .csv.gz, fer2013.tar.gz or a .zip), icml_face_data.csv, "
    "an image-folder tree (train/<emotion>/, test/<emotion>/) or a directory with X_train.npy, "
    "y_train.npy, X_test.npy, y_test.npy. See data/README.md."
)

# Bad rows listed on stderr by `prepare --skip-bad-rows`; manifest.json lists them all.
SKIPPED_ROWS_SHOWN = 20


@app.command(cls=_Command, epilog=PREPARE_SOURCES)
def prepare(
    source: Annotated[
        str, typer.Argument(metavar="SOURCE", help="FER2013 in any accepted form (see below).")
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", metavar="DIR", help="Directory to write; replaced atomically.")
    ],
    source_format: Annotated[
        SourceFormat, typer.Option("--format", help="Source form; auto detects it.")
    ] = "auto",
    val_fraction: Annotated[
        float,
        typer.Option(help="Share of each class carved from train into val when the source has no val split."),
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the stratified val carve.")] = 42,
    skip_bad_rows: Annotated[
        bool, typer.Option("--skip-bad-rows", help="Skip malformed rows or images instead of failing.")
    ] = False,
    ferplus: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="FER+'s fer2013new.csv (plain or .gz): label the faces with FER+'s 8 classes and keep "
            "their 10 votes; joined on row order, so SOURCE must be a FER2013 CSV form.",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON instead of tables.")
    ] = False,
) -> None:
    """Turn FER2013 in any form into DIR/{train,val,test}.npz and DIR/manifest.json."""
    import json

    from rich import box
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from fertrain.data.prepare import prepare as prepare_dataset

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    tasks: dict[str, int] = {}

    def report(description: str, completed: int, total: int) -> None:
        if description not in tasks:
            tasks[description] = bar.add_task(description, total=total)
        bar.update(tasks[description], completed=completed, total=total)

    with bar:
        manifest = prepare_dataset(
            source,
            out,
            fmt=source_format,
            val_fraction=val_fraction,
            seed=seed,
            skip_bad_rows=skip_bad_rows,
            ferplus=ferplus,
            progress=report,
        )
    skipped = manifest["skipped_rows"]
    if skipped["count"]:
        err_console.print(f"skipped {skipped['count']} bad rows:", highlight=False)
        for row in skipped["rows"][:SKIPPED_ROWS_SHOWN]:
            err_console.print(f"  {row}", highlight=False, soft_wrap=True)
        if skipped["count"] > SKIPPED_ROWS_SHOWN:
            more = skipped["count"] - SKIPPED_ROWS_SHOWN
            err_console.print(f"  ... and {more} more (all listed in {out}/manifest.json)")
    if json_output:
        typer.echo(json.dumps(manifest, indent=2))
        return
    source_info = manifest["source"]
    table = Table(
        title=f"{source_info['name']} ({source_info['format']}: {source_info['layout']}) -> {out}",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("split")
    table.add_column("total", justify="right")
    for emotion in manifest["classes"]:
        table.add_column(emotion, justify="right")
    for split, info in manifest["splits"].items():
        if not info["present"]:
            table.add_row(split, "missing", *[""] * len(manifest["classes"]))
            continue
        table.add_row(split, f"{info['count']:,}", *(f"{n:,}" for n in info["class_counts"].values()))
    console.print(table)
    if manifest["val_split"]["origin"] == "carved from train":
        carve = manifest["val_split"]
        console.print(f"val: {carve['fraction']:.0%} of each class of train (seed {carve['seed']})")
    if "ferplus" in manifest:
        joined = manifest["ferplus"]
        dropped = ", ".join(f"{split} {n:,}" for split, n in joined["dropped_faces"].items())
        majority = ", ".join(f"{split} {n:,}" for split, n in joined["majority_faces"].items())
        console.print(
            f"FER+ votes from {joined['file']}: faces left out (votes' argmax unknown or not a face): "
            f"{dropped}; faces with a strict majority: {majority}",
            highlight=False,
            soft_wrap=True,
        )


TRAIN_NOTES = (
    "Several machines: give each the same config with train.distribution=multi_worker and a TF_CONFIG "
    'such as {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
    '"index": 0}} (index 1 on host2); start them all; worker 0 writes the run directory.'
)


@app.command(cls=_Command, epilog=TRAIN_NOTES)
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
) -> None:
    """Train a model from `fertrain prepare` output into a run directory.

    The run directory gets config.yaml, model.keras (best val accuracy), last.keras, history.csv,
    metrics.json and tensorboard/. Exit codes: 0 done, 2 bad input, 4 training diverged (NaN loss),
    5 a run file could not be written (the message says how to continue with --resume).
    """
    from fertrain.config import load_config
    from fertrain.errors import ConfigError
    from fertrain.training import train as run_training
    from fertrain.training.progress import format_times, training_reporter

    if resume is not None and overrides:
        raise ConfigError("--resume continues a run with its own saved config; drop --set")
    loaded = load_config(config, overrides or ()) if config is not None else None
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


EVALUATE_EXIT_CODES = (
    "Exit codes: 0 when accuracy >= --min-accuracy (or none is given); "
    "3 when accuracy is below --min-accuracy; 2 on bad input (missing or unreadable model or data); "
    "5 when a result file cannot be written (no space, a path under a file, no permission)."
)


@app.command(cls=_Command, epilog=EVALUATE_EXIT_CODES)
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


@app.command(cls=_Command)
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

    They show training curves, the confusion matrix, per-class metrics, the most confident
    mistakes, the resolved config, and the environment and timings; with --compare, a table of
    the compared models beside the run's.
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


PREDICT_ARGUMENTS = (
    "[MODEL] IMAGE_OR_DIR... | [MODEL] VIDEO | [MODEL] --camera INDEX: MODEL is a run directory, a "
    ".keras/.h5 file or a SavedModel directory; without it the newest run in ./runs (else a model bundled "
    "with fertrain) is used. Directories are searched for images (not recursively). A video (.mp4, .avi, "
    ".mov, .mkv, .webm, ...) or a camera has its faces found in every analysed frame; "
    "--out writes one row per face (frame, time, box, the 7 probabilities, top emotion), growing as frames "
    "are analysed, so an error or Ctrl-C keeps the rows so far. A camera runs until --frames or Ctrl-C."
)
VIDEO_ONLY_OPTIONS = ("--out", "--every", "--frames", "--show")


@app.command(cls=_Command, epilog=PREDICT_ARGUMENTS)
def predict(
    arguments: Annotated[
        list[str] | None,
        typer.Argument(metavar="[MODEL] IMAGE_OR_DIR... | [MODEL] VIDEO", help="See below."),
    ] = None,
    detect_faces: Annotated[
        bool,
        typer.Option(
            "--detect-faces", help="Classify every face OpenCV's Haar cascade finds (always on for video)."
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON list (video: the summary) instead of tables.")
    ] = False,
    annotate: Annotated[
        str | None,
        typer.Option(
            metavar="DIR|VIDEO",
            help="Images: write copies with boxes and labels into DIR. Video or camera: write the analysed "
            "frames, annotated, to this video file (.avi, .mkv: MJPG; .mp4, .mov: mp4v).",
        ),
    ] = None,
    normalize: Annotated[
        Normalization, typer.Option(help="Pixel scaling the model expects (see `evaluate --help`).")
    ] = "raw",
    tta: TtaOption = "none",
    camera: Annotated[
        int | None, typer.Option(metavar="INDEX", min=0, help="Analyse this live camera (0: the first).")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="Video or camera: write the table of faces (.csv or .json)."),
    ] = None,
    every: Annotated[
        int, typer.Option(metavar="N", min=1, help="Video or camera: analyse every Nth frame.")
    ] = 1,
    frames: Annotated[
        int | None,
        typer.Option(metavar="N", min=1, help="Video or camera: stop after this many frames read."),
    ] = None,
    show: Annotated[
        bool, typer.Option("--show", help="Video or camera: show the annotated frames in a window.")
    ] = False,
) -> None:
    """Top-3 emotions with probabilities for each image, or for each face with --detect-faces; the
    emotions of every face in a video or a live camera.

    48x48 images are used as face crops as they are; others are converted to grayscale and resized.
    """
    import json

    from fertrain.predict import predict_images, split_model_and_images
    from fertrain.tables import predictions_table
    from fertrain.video import video_request

    request = video_request(arguments or [], camera)
    if request is not None:
        _predict_video(*request, json_output, annotate, normalize, tta, out, every, frames, show)
        return
    given = [
        name for name, value in zip(VIDEO_ONLY_OPTIONS, (out, every != 1, frames, show), strict=True) if value
    ]
    if given:
        raise typer.BadParameter(f"{', '.join(given)} apply to a video or --camera, not to images")
    if not arguments:
        raise typer.BadParameter("name images, a directory of images, a video or --camera INDEX")
    model, images = split_model_and_images(arguments)
    results = predict_images(
        model, images, detect=detect_faces, annotate_dir=annotate, normalize=normalize, tta=tta
    )
    if json_output:
        typer.echo(json.dumps([result.to_dict() for result in results]))
        return
    console.print(predictions_table(results, title=f"model: {model}"))


def _predict_video(
    model: Path,
    source: Path | int,
    json_output: bool,
    annotate: str | None,
    normalize: str,
    tta: str,
    out: str | None,
    every: int,
    frames: int | None,
    show: bool,
) -> None:
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fertrain.tables import video_face_line, video_summary_table
    from fertrain.video import VideoOptions, Window, predict_camera, predict_video

    window = Window() if show else None
    live = isinstance(source, int)

    def on_frame(result, frame) -> None:
        if window is not None:
            window.show(result, frame)
        if live and not json_output:
            console.print(video_face_line(result), highlight=False, soft_wrap=True)

    options = VideoOptions(
        every=every,
        frames=frames,
        out=out,
        annotated=annotate,
        normalize=normalize,
        tta=tta,
        on_frame=on_frame,
    )
    try:
        if live:
            summary = predict_camera(model, source, options)
        else:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} frames/s"),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
                disable=not err_console.is_terminal,
            )
            task = bar.add_task(source.name, total=None, rate="-")

            def progress(done: int, total: int | None) -> None:
                speed = bar.tasks[0].speed
                bar.update(task, completed=done, total=total, rate="-" if speed is None else f"{speed:.1f}")

            with bar:
                summary = predict_video(model, source, options, progress)
    finally:
        if window is not None:
            window.close()
    if json_output:
        typer.echo(json.dumps(summary.to_dict()))
        return
    console.print(video_summary_table(summary, title=f"model: {model}"))
    for path in (summary.table, summary.annotated):
        if path is not None:
            console.print(f"wrote {path}", highlight=False)


EXPORT_EXIT_CODES = (
    "After exporting, the first 200 test images are run through the export and the Keras model: "
    "float exports must match within 1e-4 (max abs probability difference), int8 exports must agree on "
    "the top-1 emotion for >= 98% of them. Exit codes: 0 export written and check passed; 3 check failed "
    "(the file is kept for inspection); 2 bad input or a missing optional dependency; 5 the export "
    "cannot be written (no space, a path under a file, no permission)."
)


@app.command(cls=_Command, epilog=EXPORT_EXIT_CODES)
def export(
    run_dirs: Annotated[
        list[str],
        typer.Argument(
            metavar="RUN_DIR...",
            help="A run directory written by `fertrain train`; several export as one model averaging "
            "their probabilities.",
        ),
    ],
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="Serving format (keras: one .keras file).")
    ],
    quantize: Annotated[
        Quantization | None,
        typer.Option(help="int8 weights and activations (tflite, onnx), calibrated on 200 training images."),
    ] = None,
    out: Annotated[
        str | None, typer.Option(metavar="PATH", help="Output path (default: RUN_DIR/export/...).")
    ] = None,
    data: RunDataOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Export a run's model (or several runs' average) as a SavedModel, TFLite, ONNX or .keras file, then
    check it."""
    import json

    from fertrain.export import export_model

    result = export_model(run_dirs, export_format, quantize=quantize, out=out, data_dir=data)
    check = result.check
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
    else:
        kind = f"{result.format} ({result.quantize})" if result.quantize else result.format
        console.print(f"wrote {kind} to {result.path} ({result.size_bytes / 1e6:.2f} MB)")
        verdict = "[green]passed[/]" if check.passed else "[red]FAILED[/]"
        console.print(f"check on {check.images} test images: {check.criterion}: {verdict}")
    if not check.passed:
        raise BelowThresholdError(f"export check failed: {check.criterion}; kept {result.path}")


@app.command(cls=_Command)
def summary(
    config: ConfigOption,
    overrides: OverridesOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
    plot: Annotated[
        str | None,
        typer.Option(metavar="FILE.png", help="Also draw the layer graph (needs Graphviz's dot)."),
    ] = None,
) -> None:
    """Layers, parameters, size and multiply-accumulates per image of a config's model.

    MACs count conv, depthwise/separable conv and dense layers from their shapes; BN, activations,
    pooling and adds are not counted.
    """
    import json

    from rich.table import Table

    from fertrain.config import load_config
    from fertrain.models.summary import summarize_config

    result = summarize_config(load_config(config, overrides or ()), plot_path=plot)
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
        return
    table = Table(title=f"{result.name} ({config})")
    for column in ("layer", "type", "output shape", "params", "MACs"):
        numeric = column in ("params", "MACs")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for layer in result.layers:
        shape = "(" + ", ".join("N" if d is None else str(d) for d in layer.output_shape) + ")"
        table.add_row(
            layer.name, layer.kind, shape, f"{layer.params:,}", f"{layer.macs:,}" if layer.macs else ""
        )
    console.print(table)
    console.print(
        f"parameters: {result.total_params:,} total, {result.trainable_params:,} trainable, "
        f"{result.non_trainable_params:,} non-trainable; size {result.size_mb:.2f} MB; "
        f"{result.macs:,} MACs per image"
    )
    if plot:
        console.print(f"wrote {plot}")


@app.command(cls=_Command)
def benchmark(
    config: ConfigOption,
    overrides: OverridesOption = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Training batch size (default: the config's).")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Training steps per timed window.")] = 20,
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed windows (and predict passes); the best one counts.")
    ] = 3,
    predict_images: Annotated[int, typer.Option(min=1, help="Images per timed predict pass.")] = 4096,
    compare: Annotated[
        Literal["notebook"] | None,
        typer.Option(help="Also time the notebook's way (plain fit on 0-1 floats, batch 64), same process."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
) -> None:
    """Training and inference images/s of a config on this machine, after warm-up, on random faces.

    Training goes through `fertrain train`'s own step (augmentation included); inference through
    `fertrain evaluate`'s. Speed targets live here, never in tests.
    """
    import json

    from rich.table import Table

    from fertrain.benchmark import FER2013_TRAIN_IMAGES
    from fertrain.benchmark import benchmark as run_benchmark
    from fertrain.config import load_config

    result = run_benchmark(
        load_config(config, overrides or ()),
        batch_size=batch_size,
        steps=steps,
        repeats=repeats,
        predict_images=predict_images,
        compare_notebook=compare == "notebook",
    )
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
        return
    table = Table(title=f"{result.config_name}: {', '.join(result.devices)}, Keras on {result.backend}")
    table.add_column("way")
    for column in ("batch", "train img/s (best)", "median", "train CPU ms/img", "predict img/s"):
        table.add_column(column, justify="right")
    ways = [("fertrain", result.fertrain), ("notebook", result.notebook)]
    for name, way in ways:
        if way is not None:
            table.add_row(
                name,
                str(way.batch_size),
                f"{way.train_images_per_s:,.1f}",
                f"{way.train_images_per_s_median:,.1f}",
                f"{way.train_cpu_ms_per_image:.2f}",
                f"{way.predict_images_per_s:,.1f}",
            )
    if result.notebook is not None:
        table.add_row(
            "fertrain / notebook",
            "",
            f"{result.train_speedup:.2f}x",
            "",
            "",
            f"{result.predict_speedup:.2f}x",
        )
    console.print(table)
    gpu = "" if result.gpu_peak_mb is None else f", GPU peak {result.gpu_peak_mb:,.0f} MiB"
    console.print(
        f"{result.params:,} parameters, {result.macs_per_image:,} MACs per image; "
        f"mixed precision {result.mixed_precision}, XLA {'on' if result.jit_compile else 'off'}; "
        f"FER2013 epoch ({FER2013_TRAIN_IMAGES:,} images) ~{result.epoch_seconds:,.1f} s; "
        f"{result.train_tflops * 1000:,.1f} GFLOP/s training; peak RSS {result.peak_rss_mb:,.0f} MiB{gpu}"
    )


def _fail(message: str, exit_code: int) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(exit_code)


def _unexpected(exc: Exception) -> str:
    """One line for an error fertrain did not foresee (a bug); its traceback, which a bug report needs,
    goes to a new file in the temp folder, or to stderr when that cannot be written either."""
    try:
        fd, saved = tempfile.mkstemp(prefix="fertrain-traceback-", suffix=".txt")
        with removed_on_failure(Path(saved)), os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(traceback.format_exception(exc))
        where = f"full traceback in {saved}"
    except OSError:
        traceback.print_exception(exc)
        where = "traceback above"
    # Some libraries' messages span several lines (h5py's, for one).
    text = " ".join(str(exc).split())
    return f"unexpected {type(exc).__name__}{': ' + text if text else ''} ({where})"


def main() -> None:
    try:
        app(standalone_mode=False)
    except FertrainError as exc:
        _fail(str(exc), exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors arrive here in non-standalone mode
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        error = FileSystemError.from_os_error(exc)
        _fail(str(error), error.exit_code)
    except Exception as exc:
        _fail(_unexpected(exc), UNEXPECTED_EXIT_CODE)

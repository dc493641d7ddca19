"""`fertrain prepare`: FER2013 (and FER+'s votes) in any form into a prepared directory."""

from __future__ import annotations

from typing import Annotated

import typer

from fertrain.cli.app import (
    Command,
    app,
    console,
    err_console,
)
from fertrain.data.sources import SourceFormat

PREPARE_SOURCES = (
    "SOURCE: Kaggle's fer2013.csv (also .csv.gz, fer2013.tar.gz or a .zip), icml_face_data.csv, "
    "a directory with X_train.npy, y_train.npy, X_test.npy, y_test.npy, or image folders (also in a "
    ".zip/.tar.gz): one folder per class with any names (happy/, not_happy/, ...), directly or inside "
    "train/, val/, test/; folders that all name FER2013 emotions (Kaggle's train/<emotion>/, "
    "test/<emotion>/) keep FER2013's 7 classes. See data/README.md."
)

# Bad rows listed on stderr by `prepare --skip-bad-rows`; manifest.json lists them all.
SKIPPED_ROWS_SHOWN = 20


@app.command(cls=Command, epilog=PREPARE_SOURCES)
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
    classes: Annotated[
        str | None,
        typer.Option(
            metavar="A,B,C",
            help="Image folders: the classes, in label order (default: the folder names sorted).",
        ),
    ] = None,
    detect_faces: Annotated[
        bool,
        typer.Option(
            "--detect-faces",
            help="Image folders: crop each image to the largest face OpenCV's Haar cascade finds "
            "(images without one are kept whole and counted).",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON instead of tables.")
    ] = False,
) -> None:
    """Turn FER2013 in any form, or image folders of any classes, into DIR/{train,val,test}.npz and
    DIR/manifest.json."""
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
            classes=None if classes is None else [name.strip() for name in classes.split(",")],
            detect_faces=detect_faces,
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
    if "face_detection" in manifest:
        detection = manifest["face_detection"]
        console.print(
            f"faces: found in {detection['images'] - detection['no_face']:,} of {detection['images']:,} "
            f"images; {detection['no_face']:,} without one kept whole (listed in {out}/manifest.json)",
            highlight=False,
            soft_wrap=True,
        )
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

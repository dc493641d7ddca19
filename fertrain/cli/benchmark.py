"""`fertrain benchmark`: training and inference speed, beside the notebook way."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from fertrain.cli.app import (
    Command,
    ConfigOption,
    OverridesOption,
    app,
    console,
)


@app.command(cls=Command)
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

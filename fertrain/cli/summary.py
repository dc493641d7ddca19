"""`fertrain summary`: layers, parameters, size and MACs of a config's network."""

from __future__ import annotations

from typing import Annotated

import typer

from fertrain.cli.app import (
    Command,
    ConfigOption,
    OverridesOption,
    app,
    console,
)


@app.command(cls=Command)
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

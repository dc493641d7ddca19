"""Command-line interface: each command parses options, calls one library function, renders with rich.

One module per command registers it on the Typer `app` (`fertrain.cli.app`, which also holds `main`);
they are imported in the order of the workflow, which is the order `fertrain --help` lists them in.
"""

# ruff: noqa: F401, I001
from fertrain.cli import (
    prepare,
    train,
    tune,
    evaluate,
    calibrate,
    report,
    predict,
    export,
    summary,
    benchmark,
)
from fertrain.cli.app import app, main

__all__ = ["app", "main"]

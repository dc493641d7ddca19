"""Command-line interface: each command parses options, calls one library function, renders with rich.

Library code raises `FertrainError`s; `main` turns them into one line on stderr and the error's
exit code, never a traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from fertrain import __version__
from fertrain.errors import FertrainError

app = typer.Typer(
    name="fertrain",
    help="Train, evaluate and ship Xception-family facial-emotion classifiers on FER2013.",
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


def main() -> None:
    try:
        app(standalone_mode=False)
    except FertrainError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise

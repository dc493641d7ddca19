"""The `fertrain` Typer app, the options several commands share, and `main`, which turns errors into
one line and an exit code.

Library code raises `FertrainError`s; `main` turns them, and any operating-system error on a file,
into one line on stderr and the error's exit code, never a traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from fertrain import __version__
from fertrain.errors import FertrainError, FileSystemError
from fertrain.fileio import removed_on_failure
from fertrain.inference import TtaMode

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


class Group(_FlagsTakeNoValue, TyperGroup):
    pass


class Command(_FlagsTakeNoValue, TyperCommand):
    pass


app = typer.Typer(
    name="fertrain",
    cls=Group,
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

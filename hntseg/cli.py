"""Command-line interface: parses options, calls the library, reports. No science here.

Each stage's commands live in `hntseg/commands/<stage>.py` (an `add(app)` function) and
import their stage lazily, so `hntseg --help` stays fast. A user error (HntsegError) is
printed as one line on stderr with its exit code (2 for bad input, 1 when some cases
failed); so is a usage error (a bad option value, an unknown option, a missing argument:
exit 2). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import signal
import sys

import typer
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click as typer._click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on the real click
    from click.exceptions import NoArgsIsHelpError, UsageError

from hntseg import __version__
from hntseg.errors import HntsegError, Terminated
from hntseg.log import console, logging_kept, setup_logging

COMMAND_MODULES = (
    "synth",
    "cohort",
    "register",
    "boxes",
    "gradmap",
    "qc",
    "dataset",
    "train",
    "predict",
    "evaluate",
    "pipeline",
)


class _Group(TyperGroup):
    """Turns HntsegError into a one-line message and an exit code, for every subcommand."""

    def list_commands(self, ctx):  # keep the stages in pipeline order in --help
        return list(self.commands)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HntsegError as exc:
            message = str(exc).replace("\n", " ")
            console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated) from main()
            name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
            console.print(f"[bold red]error:[/] stopped by {name}", soft_wrap=True)
            raise typer.Exit(code) from None
        except UsageError as exc:
            # a bad option value or a missing argument: one line too, not a usage box
            if isinstance(exc, NoArgsIsHelpError):
                raise
            where = exc.ctx.command_path if exc.ctx is not None else "hntseg"
            message = f"{where}: {exc.format_message()} (see {where} --help)"
            console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_Group,
    help="Head-and-neck tumour segmentation on mid-RT MRI (HNTS-MRG 2024 Task 2, Ren et al.).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hntseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    quiet: bool = typer.Option(
        False,
        "--quiet",
        "-q",
        help="Warnings, errors and results (score tables) only: no status lines, "
        "no progress bars (also nnU-Net's).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Stages: synth, register, boxes, gradmap, build-dataset, train, ensemble-predict,
    evaluate; `hntseg run CONFIG` chains them and `hntseg demo` runs the whole method on a
    synthetic cohort."""
    # undone when the command ends: a run in-process (a notebook, a test) leaves no --quiet
    ctx.with_resource(logging_kept())
    setup_logging(quiet=quiet, verbose=verbose)


for _name in COMMAND_MODULES:
    importlib.import_module(f"hntseg.commands.{_name}").add(app)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main() -> None:
    """Console-script entry point. SIGTERM unwinds like Ctrl-C (exit code 143)."""
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(app())

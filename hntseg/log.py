"""Console, logging and progress bars through rich on a terminal; off a terminal (SLURM
logs, pipes) log records are plain unwrapped lines and there are no progress bars.
`--quiet` turns both down.

`--quiet` (for clusters) keeps warnings, errors and a command's result (a table such as
`hntseg evaluate`'s scores or `hntseg cohort`'s listing, on stdout); it drops progress bars,
info logging and status lines such as "wrote N synthetic patients" (see `status`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

# Off a terminal (a SLURM log, a pipe) rich would wrap at 80 columns and split paths in
# two, so that grep cannot find them; there tables may be wide and log records are plain
# lines (see setup_logging).
LOG_FILE_WIDTH = 300
console = Console(stderr=True, width=None if sys.stderr.isatty() else LOG_FILE_WIDTH)
log = logging.getLogger("hntseg")
_state = {"quiet": False}


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Route hntseg's log through rich (plain lines off a terminal); quiet shows warnings
    only and no progress bars."""
    _state["quiet"] = quiet
    if quiet:
        # nnU-Net's own progress bars (tqdm, read from the environment when tqdm is first
        # imported, also by its worker processes) and library deprecation notices
        os.environ["TQDM_DISABLE"] = "1"
        warnings.filterwarnings("ignore", category=FutureWarning)
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    log.handlers.clear()
    if _on_terminal():
        log.addHandler(RichHandler(console=console, show_path=False, show_time=not quiet))
    else:  # a log file: one plain line per record (rich pads every line to its width)
        handler = _ConsoleStreamHandler()
        stamp = "" if quiet else "%(asctime)s "
        handler.setFormatter(_PlainFormatter(f"{stamp}%(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


# the warnings filter that --quiet adds (as warnings.filterwarnings stores it)
_QUIET_FILTER = ("ignore", None, FutureWarning, None, 0)


@contextlib.contextmanager
def logging_kept() -> Iterator[None]:
    """Inside, setup_logging may change the process; on exit the quiet state, TQDM_DISABLE,
    --quiet's warnings filter and hntseg's logger are as before. The CLI runs its command
    inside, so that an in-process run (a notebook, a test's CliRunner) leaves the process,
    the user's tqdm bars and warnings included, as it found it."""
    quiet, tqdm = _state["quiet"], os.environ.get("TQDM_DISABLE")
    had_filter = _QUIET_FILTER in warnings.filters
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    try:
        yield
    finally:
        _state["quiet"] = quiet
        if tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm
        # only --quiet's filter goes: those that libraries imported meanwhile added stay
        if not had_filter and _QUIET_FILTER in warnings.filters:
            warnings.filters.remove(_QUIET_FILTER)
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate


def _on_terminal() -> bool:
    """stderr is a terminal. Not rich's `is_terminal`, which FORCE_COLOR turns on in a log
    file too (padded log lines, progress bars as escape codes)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class _ConsoleStreamHandler(logging.StreamHandler):
    """A plain handler writing where the console writes when a record comes: sys.stderr as
    it is then (a redirect, a test's capture), or the real stream held by quiet_stdout. Not
    the stream of the moment it was made, which may be closed since."""

    @property  # type: ignore[override]
    def stream(self):
        return console.file

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ and setStream assign it
        pass


class _PlainFormatter(logging.Formatter):
    """A plain log line; rich markup in a record (extra={"markup": True}) is rendered as
    its text, so `[bold]register[/]` reads `register`."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        if getattr(record, "markup", False):
            from rich.text import Text

            record = logging.makeLogRecord(record.__dict__)
            record.message = Text.from_markup(record.message).plain
        return super().formatMessage(record)


def is_quiet() -> bool:
    """True under `--quiet`."""
    return _state["quiet"]


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Under --quiet, silence what a library (nnU-Net) writes inside the block: its prints on
    stdout and its progress bars on stderr (it passes tqdm's `disable` itself, so
    TQDM_DISABLE alone does not reach them). Its errors still raise and are reported, and
    hntseg's own warnings logged inside the block still print: the console (which follows
    sys.stderr) is held on the real stream meanwhile."""
    if not is_quiet():
        yield
        return
    console.file = sys.stderr
    try:
        with (
            open(os.devnull, "w") as devnull,
            contextlib.redirect_stdout(devnull),
            contextlib.redirect_stderr(devnull),
        ):
            yield
    finally:
        console.file = None  # type: ignore[assignment]  # follow sys.stderr again


def status(message: str) -> None:
    """Print an informational status line on stderr ("wrote ..."), unless quiet. Plain text
    (no rich markup, so paths with brackets print as they are), never wrapped."""
    if not is_quiet():
        console.print(message, markup=False, soft_wrap=True)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar (none when quiet or not on a terminal)."""
    items = list(items) if total is None else items
    total = len(items) if total is None else total  # type: ignore[arg-type]
    if is_quiet() or not _on_terminal():
        yield from items
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)

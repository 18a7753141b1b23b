"""Errors that mean "the user's input is wrong": shown as one line, never a traceback."""

import re


def one_line(exc: BaseException) -> str:
    """An exception's message as one line: an ITK exception's description or its ERROR line
    (not its source location or object address), else the last non-empty line, at most 300
    characters. An ITK reader's last line may be a stale errno ("Reason: No such file or
    directory" for a file that is there but cut short), so its ERROR line comes first."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if isinstance(exc, KeyboardInterrupt) and not lines:  # as the console says it
        return f"stopped by {'SIGTERM' if isinstance(exc, Terminated) else 'Ctrl-C'}"
    for ln in lines:
        if ln.lower().startswith("description:"):
            return _itk_message(ln.split(":", 1)[1].strip())[:300]
    for ln in lines:
        if "ERROR:" in ln:
            return _itk_message(ln)[:300]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _itk_message(line: str) -> str:
    """An ITK error line without its 'ITK ERROR: Class(0x...):' / 'ERROR:' prefixes."""
    prefix = re.compile(r"^.*?ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?")
    while True:
        shorter = prefix.sub("", line, count=1).strip()
        if shorter == line or not shorter:
            return line
        line = shorter


class HntsegError(Exception):
    """A user-facing error; its message is one line naming the file and the problem."""

    exit_code = 2


class InputError(HntsegError):
    """Bad or missing input file, bad option value, bad configuration."""


class StageError(HntsegError):
    """A stage ran but some cases failed; the others finished."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster job's time limit, `scancel`, `kill`), raised where the program
    is, so that it unwinds like Ctrl-C: partial outputs are removed on the way out."""

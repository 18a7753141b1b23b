"""Errors that mean "the user's input is wrong": shown as one line, never a traceback."""


class HntsegError(Exception):
    """A user-facing error; its message is one line naming the file and the problem."""

    exit_code = 2


class InputError(HntsegError):
    """Bad or missing input file, bad option value, bad configuration."""


class StageError(HntsegError):
    """A stage ran but some cases failed; the others finished."""

    exit_code = 1

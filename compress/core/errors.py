"""User-facing errors: every message names the file or field and the problem."""

from __future__ import annotations

import re

MAX_MESSAGE_CHARS = 2000  # an error line is cut here: a value echoed from a file must not flood the terminal
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InputError(ValueError):
    """Bad user input (checkpoint, image folder, recipe, argument).

    The CLI prints the message alone, without a traceback, and exits with status 2.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop, torchrun ending its workers), raised in the main thread as an
    interrupt by the CLI's handler, so that it unwinds as Ctrl-C does: a stage removes its half-written
    folder and each ``with`` block its temporary files, instead of the process ending where it stood."""


class BadModelOutput(InputError):
    """A model's output failed its checks (shape, type, NaN or Inf): the model's fault, not the image's."""


def first_line(exc: BaseException, last: bool = False) -> str:
    """The first (or last) non-empty line of a library's exception message, at most 200 characters."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return ((lines[-1] if last else lines[0]) if lines else type(exc).__name__)[:200]


def error_line(message: str) -> str:
    """``message`` as one printable line: control characters (newlines, terminal escapes) shown as
    escapes, so a file name or a value from a file cannot start a line of its own; cut to
    :data:`MAX_MESSAGE_CHARS`."""
    line = _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)
    if len(line) > MAX_MESSAGE_CHARS:
        line = f"{line[:MAX_MESSAGE_CHARS]}... ({len(line)} characters)"
    return line


class WriteError(InputError):
    """A file cannot be written where it was asked for (``reason``: the system's words), named by
    the path asked for, never by a temporary file."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: cannot write ({reason})")
        self.path, self.reason = path, reason


class ImageTooLarge(InputError):
    """An image over the decoded-pixel limit (refused from its header, before decoding)."""

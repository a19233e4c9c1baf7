"""User-facing errors: every message names the file or field and the problem."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (checkpoint, image folder, recipe, argument).

    The CLI prints the message alone, without a traceback, and exits with status 2.
    """


class ImageTooLarge(InputError):
    """An image over the decoded-pixel limit (refused from its header, before decoding)."""

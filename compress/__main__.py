"""Command line: ``python -m compress <command> ...``; ``python -m compress --help`` lists the commands."""

from __future__ import annotations

import sys
import warnings

from compress.pipeline.cli import main, warning_line

if __name__ == "__main__":
    warnings.formatwarning = warning_line  # the process's warnings as one `warning:` line each
    sys.exit(main())

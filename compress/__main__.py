"""Command line: ``python -m compress {inspect,eval,train,model,export} ...``."""

from __future__ import annotations

import sys

from compress.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())

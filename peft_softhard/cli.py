"""`python -m peft_softhard.cli` (the 0.1.0 spelling, kept): the `softhard` command, now `peft_softhard.app.cli`."""

import sys

from .app.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())

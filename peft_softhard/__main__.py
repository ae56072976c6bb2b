"""`python -m peft_softhard ...` is the `softhard` command (what torchrun and accelerate launch run)."""

import sys

from .app.cli import main

sys.exit(main())

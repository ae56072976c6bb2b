"""What every benchmark records next to its numbers: the machine, the versions, the wall time."""

from __future__ import annotations

import json
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any


def write_results(path: Path, what: str, started: float, **results: Any) -> dict[str, Any]:
    """Write `results` as JSON to `path` with the machine, thread count, versions and seconds since `started`."""
    import torch

    payload = {
        "what": what,
        **results,
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "versions": {package: version(package) for package in ("torch", "transformers", "peft", "peft-softhard")},
        "seconds": round(time.time() - started, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return payload

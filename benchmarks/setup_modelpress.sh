#!/usr/bin/env bash
# modelpress as `pip install modelpress` installs it, in a venv of its own (default /tmp/modelpress-base/venv, or
# the folder given as the first argument): torch==2.13.0 first and pinned (from pip's own sources or TORCH_INDEX,
# as the Makefile installs it), then this checkout with no extras, editable so the venv runs the current code.
# `make setup`'s .venv carries the extras the tests need (qlora's bitsandbytes, ray, lm-eval, ...); peft imports
# bitsandbytes whenever it is installed, which costs a run that does not use it about 1.8 s of imports. Olive's
# venv (benchmarks/setup_olive.sh) has no bitsandbytes either, so `benchmarks/seed_vs_olive.py` measures the seed's
# config from both venvs, and this one is the like-for-like install.
set -euo pipefail
VENV=${1:-/tmp/modelpress-base/venv}
TORCH_INDEX=${TORCH_INDEX:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
"$VENV/bin/python" -m pip install --quiet -e "$ROOT"
if "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("bitsandbytes") is None)'; then
    echo "setup_modelpress.sh: $VENV has bitsandbytes, which the base install does not bring; use a new folder" >&2
    exit 1
fi
"$VENV/bin/python" -m modelpress --help > /dev/null
echo "modelpress (no extras) is in $VENV"

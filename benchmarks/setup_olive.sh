#!/usr/bin/env bash
# The peer the benchmarks compare against: Microsoft Olive 0.13.0 in a venv of its own (default
# /tmp/olive-peer/venv, or the folder given as the first argument), on the same CPU torch as modelpress.
# Pins, each found necessary on 2026-12-02: olive-ai 0.13.0 does not declare `requests`, which `olive`
# imports on start; its ModelBuilder pass works with onnxruntime-genai 0.14.1 and fails with 0.15 and 0.18.
set -euo pipefail
VENV=${1:-/tmp/olive-peer/venv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet torch==2.13.0
"$VENV/bin/pip" install --quiet "olive-ai[lora,cpu]==0.13.0" requests datasets onnxruntime-genai==0.14.1
"$VENV/bin/olive" --help > /dev/null
echo "Olive 0.13.0 is in $VENV"

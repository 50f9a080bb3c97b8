#!/usr/bin/env bash
# The peer the benchmarks compare against: Microsoft Olive 0.13.0 in a venv of its own (default
# /tmp/olive-peer/venv, or the folder given as the first argument), on the same CPU torch as modelpress.
# torch is installed as the Makefile installs it: torch==2.13.0 from pip's own sources, or from TORCH_INDEX
# (same variable, same empty default; e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu where pip's
# sources are PyPI alone, whose Linux build is the CUDA one). The venv is refused unless torch.version.cuda
# is None, so both tools run the CPU build.
# Pins, each found necessary on 2026-12-02: olive-ai 0.13.0 does not declare `requests`, which `olive`
# imports on start; its ModelBuilder pass works with onnxruntime-genai 0.14.1 and fails with 0.15 and 0.18.
set -euo pipefail
VENV=${1:-/tmp/olive-peer/venv}
TORCH_INDEX=${TORCH_INDEX:-}
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
"$VENV/bin/python" -m pip install --quiet "olive-ai[lora,cpu]==0.13.0" requests datasets onnxruntime-genai==0.14.1
if ! "$VENV/bin/python" -c 'import sys, torch; sys.exit(torch.version.cuda is not None)'; then
    cuda=$("$VENV/bin/python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')
    echo "setup_olive.sh: $VENV has a CUDA torch build ($cuda), not the CPU build modelpress's .venv uses;" \
         "run it again with TORCH_INDEX=https://download.pytorch.org/whl/cpu (remove $VENV first)" >&2
    exit 1
fi
"$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "torch.version.cuda", torch.version.cuda)'
"$VENV/bin/olive" --help > /dev/null
echo "Olive 0.13.0 is in $VENV"

#!/usr/bin/env bash
# The GPU check of issue 12, for a machine with one CUDA GPU (CI never has one): LoRA and QLoRA steps at
# Phi-3-mini's shapes on CUDA, the int4 export for the CUDA EP decoded by onnxruntime-genai, and Olive's
# LoRA for comparison when Olive is installed. Needs ~10 GB of disk; aims to finish in under 8 minutes.
# Usage: PYTHON=.venv/bin/python benchmarks/gpu_check.sh [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
exec "$PYTHON" benchmarks/gpu_check.py "$@"

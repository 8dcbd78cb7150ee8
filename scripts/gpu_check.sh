#!/usr/bin/env bash
# The GPU path in one call (for a machine with a CUDA device): the `gpu`-marked tests (bf16 proxy
# on CUDA with fp32 accumulation vs the CPU fp32 merge, evaluation on CUDA vs CPU, a Ray actor on
# a GPU), then one timing line per executor (proxy evaluations per minute, per GPU).
#
#   scripts/gpu_check.sh            # uses .venv/bin/python when present
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device (CPU-only torch build?)'; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" || exit 2

status=0
"$PY" -m pytest -q -s -m gpu -p no:cacheprovider tests/executors/test_gpu.py tests/merging/test_builder.py || status=1
"$PY" benchmarks/executor_scaling.py --gpus --mixtures 64 --heldout-tokens 16000 2>&1 | grep -v -E "Writing|Loading|raylet" || status=1
exit $status

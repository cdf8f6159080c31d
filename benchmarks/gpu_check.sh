#!/usr/bin/env bash
# The GPU check, in one go on one lent GPU (the `device` tool), under 5 minutes: bare fp16/bf16/fp32 matmul,
# memory scan and read rates, then `alsel score` and every strategy at 10^6 and 10^7 pool rows against
# them (benchmarks/gpu_bench.py). Uses the machine's python3 (torch, h5py, typer, rich are in its image;
# open_clip is not needed here). The log is copied to $OUT when the device tool gives one.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu_bench.py --sizes "${SIZES:-1000000,10000000}" "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"

#!/usr/bin/env bash
# The GPU check, in one go on one lent GPU (the `device` tool): bare fp16/bf16/fp32 matmul, memory scan,
# randn and read rates; every command on the CPU and on the GPU on one clustered world, compared; then
# `alsel score` and every strategy at 10^6 and 10^7 pool rows against their limits at those rates, and
# cProfiles of the strategies furthest from them at 10^6 (benchmarks/gpu_bench.py; files into $OUT).
# On an H200 the run without profiles took 239 s (benchmarks/gpu_runs/). Uses the machine's python3 (torch,
# h5py, typer, rich are in its image; open_clip is not needed here).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" ALSEL_DEBUG=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import sys, torch, numpy, h5py, typer; print(sys.version.split()[0], torch.__version__, numpy.__version__, h5py.__version__, typer.__version__)' || true
python3 benchmarks/gpu_bench.py --sizes "${SIZES:-1000000,10000000}" "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"

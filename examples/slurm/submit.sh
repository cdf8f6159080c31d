#!/usr/bin/env bash
# Thresholds -> scoring job array (one task per shard) -> merged selection, as three dependent jobs.
# Usage: PAIRED=p.h5 POOL=u.h5 OUT=run SHARDS=16 BUDGET=1000 bash examples/slurm/submit.sh
set -euo pipefail
: "${PAIRED:?set PAIRED}" "${POOL:?set POOL}" "${OUT:?set OUT}"
SHARDS=${SHARDS:-8} BUDGET=${BUDGET:-1000}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/scores" "$OUT/logs"
export PAIRED POOL OUT BUDGET
xi=$(sbatch --parsable --output="$OUT/logs/threshold_%j.out" "$here/threshold.sbatch")
array=$(sbatch --parsable --dependency="afterok:$xi" --array="0-$((SHARDS - 1))" \
  --output="$OUT/logs/score_%A_%a.out" "$here/score_array.sbatch")
sel=$(sbatch --parsable --dependency="afterok:$array" --output="$OUT/logs/select_%j.out" "$here/select.sbatch")
echo "submitted: thresholds $xi, scoring array $array ($SHARDS tasks), selection $sel"

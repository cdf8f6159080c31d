#!/usr/bin/env bash
# Thresholds -> scoring job array (one task per shard) -> merged selection, as three dependent jobs.
# Usage: PAIRED=p.h5 POOL=u.h5 OUT=run SHARDS=16 BUDGET=1000 bash examples/slurm/submit.sh
# Optional: GRES (default gpu:1; empty for CPU nodes), CPUS (cpus per task, default 8), SBATCH_ARGS
# (more sbatch flags for every job, e.g. "--partition=gpu --account=vision").
# The jobs inherit this shell's environment (sbatch's default --export=ALL): alsel must be on PATH.
set -euo pipefail
: "${PAIRED:?set PAIRED}" "${POOL:?set POOL}" "${OUT:?set OUT}"
SHARDS=${SHARDS:-8} BUDGET=${BUDGET:-1000} GRES=${GRES-gpu:1} CPUS=${CPUS:-8}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/scores" "$OUT/logs"
export PAIRED POOL OUT BUDGET
# shellcheck disable=SC2086  # SBATCH_ARGS is a list of flags
gpu=(${GRES:+--gres=$GRES} --cpus-per-task="$CPUS" ${SBATCH_ARGS:-})
# shellcheck disable=SC2086
xi=$(sbatch --parsable "${gpu[@]}" --output="$OUT/logs/threshold_%j.out" "$here/threshold.sbatch")
array=$(sbatch --parsable "${gpu[@]}" --dependency="afterok:$xi" --array="0-$((SHARDS - 1))" \
  --output="$OUT/logs/score_%A_%a.out" "$here/score_array.sbatch")
# shellcheck disable=SC2086
sel=$(sbatch --parsable --cpus-per-task=1 ${SBATCH_ARGS:-} --dependency="afterok:$array" \
  --output="$OUT/logs/select_%j.out" "$here/select.sbatch")
echo "submitted: thresholds $xi, scoring array $array ($SHARDS tasks), selection $sel"

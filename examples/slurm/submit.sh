#!/usr/bin/env bash
# A selection over a SLURM job array, as dependent jobs (afterok):
#   STRATEGY=hn (default): thresholds -> scoring array (one task per shard) -> selection over the scores;
#   STRATEGY=coreset|typiclust|probcover|hn-density|schedule|random|hn-learnability: shard array -> merge;
#   STRATEGY=auto: advise -> shard array (the recommended strategy) -> merge.
# Usage: PAIRED=p.h5 POOL=u.h5 OUT=run SHARDS=16 BUDGET=1000 [STRATEGY=coreset] bash examples/slurm/submit.sh
# Optional: GRES (default gpu:1; empty for CPU nodes), CPUS (cpus per task, default 8), SEED, SBATCH_ARGS
# (more sbatch flags for every job, e.g. "--partition=gpu --account=vision").
# The jobs inherit this shell's environment (sbatch's default --export=ALL): alsel must be on PATH.
set -euo pipefail
: "${PAIRED:?set PAIRED}" "${POOL:?set POOL}" "${OUT:?set OUT}"
SHARDS=${SHARDS:-8} BUDGET=${BUDGET:-1000} GRES=${GRES-gpu:1} CPUS=${CPUS:-8} STRATEGY=${STRATEGY:-hn}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/logs"
export PAIRED POOL OUT BUDGET STRATEGY
# shellcheck disable=SC2086  # SBATCH_ARGS is a list of flags
gpu=(${GRES:+--gres=$GRES} --cpus-per-task="$CPUS" ${SBATCH_ARGS:-})
if [ "$STRATEGY" = hn ]; then
  mkdir -p "$OUT/scores"
  xi=$(sbatch --parsable "${gpu[@]}" --output="$OUT/logs/threshold_%j.out" "$here/threshold.sbatch")
  array=$(sbatch --parsable "${gpu[@]}" --dependency="afterok:$xi" --array="0-$((SHARDS - 1))" \
    --output="$OUT/logs/score_%A_%a.out" "$here/score_array.sbatch")
  # shellcheck disable=SC2086
  sel=$(sbatch --parsable --cpus-per-task=1 ${SBATCH_ARGS:-} --dependency="afterok:$array" \
    --output="$OUT/logs/select_%j.out" "$here/select.sbatch")
  echo "submitted: thresholds $xi, scoring array $array ($SHARDS tasks), selection $sel"
  exit 0
fi
mkdir -p "$OUT/candidates"
after=()
if [ "$STRATEGY" = auto ]; then
  adv=$(sbatch --parsable "${gpu[@]}" --output="$OUT/logs/advise_%j.out" "$here/advise.sbatch")
  after=(--dependency="afterok:$adv")
  echo "submitted: advice $adv"
fi
array=$(sbatch --parsable "${gpu[@]}" "${after[@]}" --array="0-$((SHARDS - 1))" \
  --output="$OUT/logs/shard_%A_%a.out" "$here/select_array.sbatch")
# shellcheck disable=SC2086
sel=$(sbatch --parsable --cpus-per-task=1 ${SBATCH_ARGS:-} --dependency="afterok:$array" \
  --output="$OUT/logs/merge_%j.out" "$here/merge.sbatch")
echo "submitted: $STRATEGY shard array $array ($SHARDS tasks), merge $sel"

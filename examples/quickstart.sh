#!/usr/bin/env bash
# alsel quickstart: a synthetic world, hard-negative thresholds, scores in 2 shards, a selection.
# Offline, CPU, well under a minute. Usage: bash examples/quickstart.sh [WORKDIR]
set -euo pipefail
dir=${1:-runs/quickstart}
mkdir -p "$dir"

alsel synth --out "$dir/world" --images 2000 --captions 5 --classes 50 --dim 64 --seed 0

# ξ_j for every paired caption: top-1 hardest negative image, full batch, loss form (the paper's best)
alsel threshold --paired "$dir/world/paired.h5" --out "$dir/xi.h5" --select images --top-k 1 --batch full --form loss

# score the image pool in two shards, as two SLURM array tasks would
for i in 0 1; do
  alsel score --paired "$dir/world/paired.h5" --unpaired "$dir/world/pool_images.h5" \
    --thresholds "$dir/xi.h5" --weight surplus --shard "$i/2" --out "$dir/scores_$i.h5"
done

# merge the shards and take the 20 most wanted images; CSV for the annotation tool
alsel select --scores "$dir"/scores_*.h5 --budget 20 --out "$dir/selection.h5" --csv "$dir/selection.csv"

# the baselines, for comparison
alsel select --strategy random --unpaired "$dir/world/pool_images.h5" --budget 20 --seed 0 --out "$dir/random.h5" >/dev/null
alsel select --strategy coreset --paired "$dir/world/paired.h5" --unpaired "$dir/world/pool_images.h5" \
  --budget 20 --out "$dir/coreset.h5" >/dev/null

alsel info "$dir/selection.h5"
echo "top of the selection ($dir/selection.csv):"
head -n 6 "$dir/selection.csv"

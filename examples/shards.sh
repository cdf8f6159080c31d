#!/usr/bin/env bash
# The SLURM pipeline of examples/slurm as a plain shell loop: thresholds, N shards scored one after
# another (each resumable), the merged selection, and a check that it equals scoring the pool whole.
# Usage: bash examples/shards.sh [WORKDIR] [SHARDS]
set -euo pipefail
dir=${1:-runs/shards} n=${2:-4}
mkdir -p "$dir/scores"
alsel synth --out "$dir/world" --images 1500 --seed 1 >/dev/null
alsel threshold --paired "$dir/world/paired.h5" --out "$dir/xi.h5" >/dev/null
for ((i = 0; i < n; i++)); do
  alsel score --paired "$dir/world/paired.h5" --unpaired "$dir/world/pool_images.h5" --thresholds "$dir/xi.h5" \
    --shard "$i/$n" --resume --out "$dir/scores/shard_$i.h5" >/dev/null
done
alsel select --scores "$dir"/scores/shard_*.h5 --budget 50 --out "$dir/selection.h5" --csv "$dir/selection.csv" >/dev/null
# the same without shards
alsel score --paired "$dir/world/paired.h5" --unpaired "$dir/world/pool_images.h5" --thresholds "$dir/xi.h5" \
  --out "$dir/whole.h5" >/dev/null
alsel select --scores "$dir/whole.h5" --budget 50 --out "$dir/whole_selection.h5" --csv "$dir/whole_selection.csv" >/dev/null
# same items in the same order (scores may differ in the last float32 bit across shard layouts)
if cmp -s <(cut -d, -f1-3 "$dir/selection.csv") <(cut -d, -f1-3 "$dir/whole_selection.csv"); then
  echo "$n shards merged: the selection equals the unsharded one ($dir/selection.csv)"
else
  echo "error: the merged selection differs from the unsharded one" >&2
  exit 1
fi

#!/usr/bin/env bash
# alsel quickstart: a generated world (a paired set, a pool, a test set), then the next batch to annotate
# with the recommended strategy, as files an annotator or a script takes: a CSV with ranks and a page.
# Offline, CPU, under a minute. Usage: bash examples/quickstart.sh [WORKDIR]
set -euo pipefail
dir=${1:-runs/quickstart}
mkdir -p "$dir"

# 2,000 images with 5 captions each: 10% paired, 70% pool (images without captions), 20% test
alsel synth --out "$dir/world" --images 2000 --captions 5 --classes 50 --dim 64 --seed 0

# what the stores hold
alsel info "$dir/world/paired.h5" "$dir/world/pool_images.h5" --json | cut -c1-160

# the next 20 pool images to caption, with the default strategy (the one the strategy report recommends;
# `alsel strategies` lists the others): a selection file, a CSV for the annotation tool, a page to look at
alsel select --paired "$dir/world/paired.h5" --unpaired "$dir/world/pool_images.h5" --budget 20 \
  --out "$dir/selection.h5" --csv "$dir/selection.csv" --html "$dir/selection.html"

alsel info "$dir/selection.h5"
echo "top of the selection ($dir/selection.csv; the page: $dir/selection.html):"
head -n 6 "$dir/selection.csv"

#!/usr/bin/env bash
# alsel quickstart: a generated world (a paired set, a pool, a test set), then the next batch to annotate
# with the strategy advised for it, as files an annotator or a script takes: a CSV with ranks and a page.
# Offline, CPU, about a minute and a half on 2 cores. Usage: bash examples/quickstart.sh [WORKDIR]
set -euo pipefail
dir=${1:-runs/quickstart}
mkdir -p "$dir"

# 2,000 images with 5 captions each: 10% paired, 70% pool (images without captions), 20% test
alsel synth --out "$dir/world" --images 2000 --captions 5 --classes 50 --dim 64 --seed 0

# what the stores hold
alsel info "$dir/world/paired.h5" "$dir/world/pool_images.h5" --json | cut -c1-160

# which strategy for this data and budget: alsel advise measures each candidate against random on splits of
# the paired store (about a minute on 2 CPU cores) and recommends one, or TypiClust (--fallback) when none is
# reliably ahead
alsel advise --paired "$dir/world/paired.h5" --unpaired "$dir/world/pool_images.h5" --budget 20 \
  --out "$dir/advice.json"

# the next 20 pool images to caption, with select's default strategy (auto: the advice's choice): a selection
# file, a CSV for the annotation tool, a page to look at
alsel select --paired "$dir/world/paired.h5" --unpaired "$dir/world/pool_images.h5" --budget 20 \
  --advice "$dir/advice.json" --out "$dir/selection.h5" --csv "$dir/selection.csv" --html "$dir/selection.html"

alsel info "$dir/selection.h5"
echo "top of the selection ($dir/selection.csv; the page: $dir/selection.html):"
head -n 6 "$dir/selection.csv"

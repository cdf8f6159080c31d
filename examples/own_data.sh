#!/usr/bin/env bash
# Your own data: a folder of photos with captions for some of them -> the next photos to caption -> back.
#
#   bash examples/own_data.sh start PHOTOS_DIR CAPTIONS.csv WORK [BUDGET]
#       embeds the folder (photos named in CAPTIONS.csv become the paired store, the rest the pool) and
#       chooses BUDGET photos (default 25): WORK/round1/to_caption.csv (rank,id,row,score,path),
#       WORK/round1/batch.html (the batch as thumbnails, to look at) and WORK/round1/tasks.json (a Label
#       Studio import file; or `alsel labelstudio push --selection WORK/round1/selection.h5`).
#   caption them: by hand into a CSV with columns id,text (one row per caption, id as in to_caption.csv),
#       or in Label Studio (export as JSON, or `alsel labelstudio pull --out export.json`). A photo left
#       without a caption is skipped: it stays in the pool and is never chosen again.
#   bash examples/own_data.sh next WORK NEW_CAPTIONS.csv|export.json
#       merges the new captions (only they are embedded) and chooses the next batch in WORK/roundN+1.
#
# CAPTIONS.csv has columns id,text,image (image = the photo's path inside PHOTOS_DIR).
# ALSEL_EMBED: extra flags for `alsel embed`, e.g. "--model ViT-B-32 --pretrained openai" (the default
# model) or "--pretrained /path/to/checkpoint.pt"; `next` embeds captions with the model the stores record.
set -euo pipefail

usage() { sed -n '2,16p' "$0" >&2; exit 2; }
choose() {  # choose ROUND_DIR BUDGET: the next batch (select's default strategy, the one the README recommends)
  alsel select --paired "$1/paired.h5" --unpaired "$1/pool.h5" --budget "$2" --out "$1/selection.h5" \
    --csv "$1/to_caption.csv" --labelstudio "$1/tasks.json" --html "$1/batch.html"
  echo "caption the photos listed in $1/to_caption.csv (see $1/batch.html; or push $1/selection.h5 to Label Studio)"
}

case ${1:-} in
start)
  [ $# -ge 4 ] || usage
  photos=$2 captions=$3 work=$4 budget=${5:-25}
  mkdir -p "$work/round1"
  # shellcheck disable=SC2086  # ALSEL_EMBED is a list of flags
  alsel embed --images "$photos" --captions "$captions" --out "$work/round1/paired.h5" \
    --pool-out "$work/round1/pool.h5" ${ALSEL_EMBED:-}
  echo "$budget" > "$work/budget"
  choose "$work/round1" "$budget"
  ;;
next)
  [ $# -ge 3 ] || usage
  work=$2 new=$3
  r=$(find "$work" -maxdepth 1 -name 'round*' -type d | wc -l)
  n=$((r + 1))
  mkdir -p "$work/round$n"
  alsel merge --paired "$work/round$r/paired.h5" --unpaired "$work/round$r/pool.h5" \
    --selection "$work/round$r/selection.h5" --captions "$new" \
    --out-paired "$work/round$n/paired.h5" --out-pool "$work/round$n/pool.h5"
  choose "$work/round$n" "$(cat "$work/budget")"
  ;;
*)
  usage
  ;;
esac

#!/usr/bin/env bash
# Rebuild the reference zoo from the recipes: `bash zoo/build.sh [--into DIR] [RECIPE[:SEED] ...]` (default: all).
# Each model is trained by train/run.py from its recipe with a fixed seed (0 unless :SEED is given; the zoo holds
# seeds 0 and 1) on one CPU thread, JOBS models at a time (default 2), then its Hub folder is moved into
# DIR/NAME (default zoo/) under a temporary name first, so an interrupted build never leaves a half-written model.
# The canvas models of the extra seeds behind results/images.md are built outside the zoo:
#   bash zoo/build.sh --into runs/seeds canvas:2 canvas:3 canvas-{plain,gated,gated-headwise,reg,gated-reg,gp}:{4,5}
# (`canvas:SEED` is every canvas variant of that seed).
set -euo pipefail
cd "$(dirname "$0")/.."

CANVAS=(plain gated gated-headwise reg gated-reg gp gp-penalty)
SYNTHETIC=(plain gated gated-headwise reg gated-reg)
ARMS=(gp gp-penalty)  # the paper's controlled broadcast arms, beside broadcast-plain
into=zoo
if [ "${1:-}" = --into ]; then
  [ $# -ge 2 ] || { echo "zoo/build.sh: --into needs a folder" >&2; exit 2; }
  into=$2
  shift 2
fi
jobs=${JOBS:-2}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "zoo/build.sh: JOBS='$jobs'; allowed: a positive integer" >&2; exit 2; }

items=()
for item in "$@"; do
  if [[ $item == canvas:* ]]; then
    for variant in "${CANVAS[@]}"; do items+=("canvas-$variant:${item#canvas:}"); done
  else
    items+=("$item")
  fi
done
if [ $# -eq 0 ]; then
  for seed in 0 1; do
    for variant in "${CANVAS[@]}"; do items+=("canvas-$variant:$seed"); done
    for task in nop broadcast; do for variant in "${SYNTHETIC[@]}"; do items+=("$task-$variant:$seed"); done; done
    for variant in "${ARMS[@]}"; do items+=("broadcast-$variant:$seed"); done
  done
fi

names=()
declare -A seen
for item in "${items[@]}"; do
  recipe=${item%%:*}
  seed=0
  [[ $item == *:* ]] && seed=${item##*:}
  case $recipe in
    canvas-*) name=vit-${recipe#canvas-} ;;
    nop-* | broadcast-*) name=$recipe ;;
    *) name= ;;
  esac
  if [ -z "$name" ] || [ ! -f "train/recipes/$recipe.yaml" ] || [[ ! $seed =~ ^[0-9]+$ ]]; then
    echo "zoo/build.sh: no zoo model is built from '$item'; allowed: canvas-VARIANT[:SEED], canvas:SEED," \
      "nop-VARIANT[:SEED], broadcast-VARIANT[:SEED] with a recipe in train/recipes/ and SEED an integer" >&2
    exit 2
  fi
  [ "$seed" != 0 ] && name=$name-seed$seed
  if [ -n "${seen[$name]:-}" ]; then
    echo "zoo/build.sh: '$item' names $name twice; allowed: each model once" >&2
    exit 2
  fi
  seen[$name]=1
  names+=("$recipe $seed $name")
done

build() {
  local recipe=$1 seed=$2 name=$3 run=runs/zoo/$3
  rm -rf "$run"
  echo "== $recipe (seed $seed) -> $into/$name"
  OMP_NUM_THREADS=1 python train/run.py --config "train/recipes/$recipe.yaml" --seed "$seed" --output_dir "$run" \
    --save_steps 0 > "$run.log" 2>&1 || { tail -n 20 "$run.log" >&2; return 1; }
  cp "$run/summary.json" "$run/model/training_summary.json"
  rm -rf "$into/.$name.tmp"
  mv "$run/model" "$into/.$name.tmp"
  rm -rf "${into:?}/$name"
  mv "$into/.$name.tmp" "$into/$name"
}

mkdir -p runs/zoo "$into"
# A failed model stops the others too: none of them may move a model into place after the build reported failure.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
running=0
for entry in "${names[@]}"; do
  # shellcheck disable=SC2086
  build $entry &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n || exit 1; running=$((running - 1)); fi
done
while [ "$running" -gt 0 ]; do wait -n || exit 1; running=$((running - 1)); done
du -sh "$into"

#!/usr/bin/env bash
# Rebuild the reference zoo from the recipes: `bash zoo/build.sh [RECIPE ...]` (default: all of them).
# Each model is trained by train/run.py with the recipe's fixed seed, then its Hub folder is moved into zoo/NAME
# under a temporary name first, so an interrupted build never leaves a half-written model.
set -euo pipefail
cd "$(dirname "$0")/.."

DIGITS=(plain gated reg gated-reg)
SYNTHETIC=(plain gated gated-headwise reg gated-reg)
declare -A NAMES  # recipe -> zoo folder
for variant in "${DIGITS[@]}"; do NAMES[digits-toy-$variant]=vit-$variant; done
for task in nop broadcast; do
  for variant in "${SYNTHETIC[@]}"; do NAMES[$task-$variant]=$task-$variant; done
done

recipes=("$@")
if [ ${#recipes[@]} -eq 0 ]; then
  recipes=()
  for variant in "${DIGITS[@]}"; do recipes+=("digits-toy-$variant"); done
  for task in nop broadcast; do for variant in "${SYNTHETIC[@]}"; do recipes+=("$task-$variant"); done; done
fi

for recipe in "${recipes[@]}"; do
  name=${NAMES[$recipe]:-}
  if [ -z "$name" ]; then
    echo "zoo/build.sh: no zoo model is built from recipe '$recipe'; allowed: ${!NAMES[*]}" >&2
    exit 2
  fi
  run=runs/zoo/$recipe
  rm -rf "$run"
  echo "== $recipe -> zoo/$name"
  python train/run.py --config "train/recipes/$recipe.yaml" --output_dir "$run" --save_steps 0 > "$run.log" 2>&1 \
    || { tail -n 20 "$run.log" >&2; exit 1; }
  cp "$run/summary.json" "$run/model/training_summary.json"
  rm -rf "zoo/.$name.tmp"
  mv "$run/model" "zoo/.$name.tmp"
  rm -rf "zoo/$name"
  mv "zoo/.$name.tmp" "zoo/$name"
done
du -sh zoo

#!/usr/bin/env bash
# Rebuild the reference zoo from the recipes: `bash zoo/build.sh [RECIPE[:SEED] ...]` (default: all of it).
# Each model is trained by train/run.py from its recipe with a fixed seed (the recipe's, 0, unless :SEED is given;
# the synthetic-task models are built for seeds 0 and 1), then its Hub folder is moved into zoo/NAME under a
# temporary name first, so an interrupted build never leaves a half-written model.
set -euo pipefail
cd "$(dirname "$0")/.."

DIGITS=(plain gated reg gated-reg)
SYNTHETIC=(plain gated gated-headwise reg gated-reg)

items=("$@")
if [ ${#items[@]} -eq 0 ]; then
  for variant in "${DIGITS[@]}"; do items+=("digits-toy-$variant"); done
  for seed in 0 1; do
    for task in nop broadcast; do for variant in "${SYNTHETIC[@]}"; do items+=("$task-$variant:$seed"); done; done
  done
fi

for item in "${items[@]}"; do
  recipe=${item%%:*}
  seed=0
  [[ $item == *:* ]] && seed=${item##*:}
  case $recipe in
    digits-toy-*) name=vit-${recipe#digits-toy-} ;;
    nop-* | broadcast-*) name=$recipe ;;
    *) name= ;;
  esac
  if [ -z "$name" ] || [ ! -f "train/recipes/$recipe.yaml" ]; then
    echo "zoo/build.sh: no zoo model is built from '$item'; allowed: digits-toy-VARIANT, nop-VARIANT[:SEED]," \
      "broadcast-VARIANT[:SEED] with a recipe in train/recipes/" >&2
    exit 2
  fi
  [ "$seed" != 0 ] && name=$name-seed$seed
  run=runs/zoo/$name
  mkdir -p runs/zoo
  rm -rf "$run"
  echo "== $recipe (seed $seed) -> zoo/$name"
  python train/run.py --config "train/recipes/$recipe.yaml" --seed "$seed" --output_dir "$run" --save_steps 0 \
    > "$run.log" 2>&1 || { tail -n 20 "$run.log" >&2; exit 1; }
  cp "$run/summary.json" "$run/model/training_summary.json"
  rm -rf "zoo/.$name.tmp"
  mv "$run/model" "zoo/.$name.tmp"
  rm -rf "zoo/$name"
  mv "zoo/.$name.tmp" "zoo/$name"
done
du -sh zoo

"""Train any SinkViT variant: `accelerate launch train/run.py --config train/recipes/NAME.yaml [--key value ...]`.

Also runs with plain `python`. The recipe's keys are the fields of sink_models.training's ModelArguments,
DataArguments and TrainArguments; command-line options override them (`--help` lists them all).
"""

import json
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from sink_models.processes import exit_launched
from sink_models.training import DataArguments, ModelArguments, TrainArguments, train

GROUPS = (ModelArguments, DataArguments, TrainArguments)


def parse(argv: list[str]) -> tuple:
    parser = HfArgumentParser(GROUPS, allow_abbrev=False)  # a misspelt option is an error, not a prefix
    parser.add_argument("--config", default=None, help="a YAML recipe (train/recipes/*.yaml)")
    config = parser.parse_known_args(argv)[0].config
    if config is not None:
        path = Path(config)
        if not path.is_file():
            recipes = sorted(p.name for p in Path(__file__).with_name("recipes").glob("*.yaml"))
            raise SystemExit(f"--config: no file {config!r}; recipes here: {', '.join(recipes)}")
        recipe = yaml.safe_load(path.read_text()) or {}
        known = {f for group in GROUPS for f in group.__dataclass_fields__}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise SystemExit(f"{config}: unknown recipe keys {unknown}; allowed: {', '.join(sorted(known))}")
        for key in ("model_overrides", "dataset_options"):  # YAML mappings, passed on as JSON text
            if isinstance(recipe.get(key), dict):
                recipe[key] = json.dumps(recipe[key])
        parser.set_defaults(**recipe)
    *groups, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    leftover = [arg for arg in rest if arg not in ("--config", config)]
    if leftover:
        raise SystemExit(f"unknown options {leftover}; see --help")
    return tuple(groups[:3])


if __name__ == "__main__":
    model_args, data_args, train_args = parse(sys.argv[1:])
    try:
        summary = train(model_args, data_args, train_args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        exit_launched(1)
        raise SystemExit(1) from None
    print(json.dumps(summary, indent=1))
    exit_launched(0)

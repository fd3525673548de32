"""Train any SinkViT variant: `accelerate launch train/run.py --config train/recipes/NAME.yaml [--key value ...]`.

Also runs with plain `python`. The recipe's keys are the fields of sink_models.training's ModelArguments,
DataArguments and TrainArguments; command-line options override them (`--help` lists them all).
"""

import json
import os
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from sink_models.errors import InputError
from sink_models.processes import exit_launched
from sink_models.training import DataArguments, ModelArguments, TrainArguments, train

GROUPS = (ModelArguments, DataArguments, TrainArguments)


def read_recipe(config: str) -> dict:
    """The recipe at `config` as a dict of known keys; an InputError (one line) for anything else."""
    path = Path(config)
    if not path.is_file():
        recipes = sorted(p.name for p in Path(__file__).with_name("recipes").glob("*.yaml"))
        raise InputError(f"--config: no file {config!r}; recipes here: {', '.join(recipes)}")
    try:
        recipe = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, ValueError) as error:  # ValueError: not UTF-8 text
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
        raise InputError(
            f"--config: {config} is not YAML ({problem}{where}); allowed: lines of 'key: value'."
        ) from None
    recipe = recipe or {}
    if not isinstance(recipe, dict):
        raise InputError(f"--config: {config} holds a {type(recipe).__name__}; allowed: lines of 'key: value'.")
    known = {f for group in GROUPS for f in group.__dataclass_fields__}
    unknown = sorted(set(recipe) - known, key=str)
    if unknown:
        raise InputError(f"{config}: unknown recipe keys {unknown}; allowed: {', '.join(sorted(known))}")
    return recipe


def parse(argv: list[str]) -> tuple:
    parser = HfArgumentParser(GROUPS, allow_abbrev=False)  # a misspelt option is an error, not a prefix
    parser.add_argument("--config", default=None, help="a YAML recipe (train/recipes/*.yaml)")
    config = parser.parse_known_args(argv)[0].config
    if config is not None:
        recipe = read_recipe(config)
        for key in ("model_overrides", "dataset_options"):  # YAML mappings, passed on as JSON text
            if isinstance(recipe.get(key), dict):
                recipe[key] = json.dumps(recipe[key])
        parser.set_defaults(**recipe)
    *groups, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    leftover = [arg for arg in rest if arg not in ("--config", config)]
    if leftover:
        raise InputError(f"unknown options {leftover}; see --help")
    return tuple(groups[:3])


def main(argv: list[str]) -> int:
    """Train; bad input (arguments, recipe, data, checkpoint) is one line on stderr and exit code 2, as in eval."""
    try:
        summary = train(*parse(argv))
    except InputError as error:
        if os.environ.get("RANK", "0") == "0":  # every process meets the same bad input; one of them says so
            print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    exit_launched(code)
    sys.exit(code)

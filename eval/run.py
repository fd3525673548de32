"""Accuracy and sink diagnostics into results and model cards: `accelerate launch eval/run.py [--model ...]`.

With no arguments it evaluates the reference zoo (eval/suites/zoo.yaml) offline. `--suite NAME_OR_YAML` takes a
suite (eval/suites/*.yaml or a file of the same keys); command-line options override the suite. Also runs with
plain `python`. `python eval/run.py --help` lists the options.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import datasets  # noqa: E402
import evaluate  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from sink_models.cards import markdown_table, write_card  # noqa: E402
from sink_models.evaluation import EvalArguments, EvalError, evaluate_checkpoint, load_checkpoint  # noqa: E402
from sink_models.files import write_json  # noqa: E402
from sink_models.synthetic import write_synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUITES = Path(__file__).with_name("suites")
METRIC = Path(__file__).with_name("metrics") / "top_k_accuracy"
TEMPLATE = ROOT / "model_cards" / "template.md"


def parse(argv: list[str]) -> EvalArguments:
    parser = HfArgumentParser(EvalArguments, allow_abbrev=False)
    parser.add_argument(
        "--suite", default=None, help=f"one of {sorted(p.stem for p in SUITES.glob('*.yaml'))} or a YAML file"
    )
    suite = parser.parse_known_args(argv)[0].suite
    if suite is None and "--model" not in argv:
        suite = "zoo"  # no models named: the shipped zoo
    if suite is not None:
        path = Path(suite) if suite.endswith((".yaml", ".yml")) else SUITES / f"{suite}.yaml"
        if not path.is_file():
            raise EvalError(
                f"--suite: no suite {suite!r}; allowed: {sorted(p.stem for p in SUITES.glob('*.yaml'))} or a YAML file"
            )
        values = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(values) - set(EvalArguments.__dataclass_fields__))
        if unknown:
            raise EvalError(
                f"{path}: unknown suite keys {unknown}; allowed: {', '.join(EvalArguments.__dataclass_fields__)}"
            )
        parser.set_defaults(**values)
    args, _, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)  # _: --suite
    if rest:
        raise EvalError(f"unknown options {rest}; see --help")
    return args


def trusted(source: str, args: EvalArguments) -> bool:
    """Remote code runs only with --trust_remote_code, or for the zoo this repository ships."""
    zoo = ROOT / "zoo"
    return args.trust_remote_code or (os.path.isdir(source) and zoo in Path(source).resolve().parents)


def main(argv: list[str]) -> int:
    args = parse(argv)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()  # one progress bar: the images evaluated
    accelerator = Accelerator()
    main_process = accelerator.is_main_process
    metric = evaluate.load(str(METRIC))
    results = []
    for source in args.model:
        checkpoint = load_checkpoint(
            source,
            revision=args.revision,
            trust_remote_code=trusted(source, args),
            attn_implementation=args.attn_implementation,
        )
        result, report = evaluate_checkpoint(checkpoint, args, metric, accelerator, accelerator.is_local_main_process)
        if main_process:
            write_json(Path(args.results_dir) / f"{checkpoint.name}.json", result)
            write_card(
                result, report, Path(args.cards_dir) / checkpoint.name, TEMPLATE, args.hub_org, args.hub_revision
            )
        results.append(result)
    if args.synthetic_models and main_process:
        write_synthetic(
            args.synthetic_models, Path(args.results_dir), retrain_steps=args.retrain_steps, seeds=args.seeds
        )
    if results and main_process:
        print(leaderboard(results))
    accelerator.wait_for_everyone()
    return 0


def leaderboard(results: list[dict]) -> str:
    """The comparison table of the evaluated models, best top-1 first."""
    columns = ["model", "top-1", "top-5", "sinks / img", "NOP / img", "broadcast / img", "CLS", "register", "patch"]
    rows = []
    for r in sorted(results, key=lambda r: -(r["accuracy"] or {}).get("top1", -1)):
        accuracy, sinks = r["accuracy"] or {}, r["sinks"]
        share = sinks["sink_share"]
        rows.append(
            [r["name"], accuracy.get("top1"), accuracy.get("top5"), sinks["sinks_per_image"], sinks["nop_per_image"]]
            + [sinks["broadcast_per_image"], share["cls"], share["register"], share["patch"]]
        )
    return markdown_table(columns, rows)


def cli(argv: list[str]) -> int:
    """main(), with bad input reported as one line on stderr and exit code 2."""
    try:
        return main(argv)
    except ValueError as error:  # EvalError included
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))

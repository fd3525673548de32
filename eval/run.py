"""Accuracy and sink diagnostics into results and model cards: `accelerate launch eval/run.py [--model ...]`.

With no arguments it evaluates the reference zoo (eval/suites/zoo.yaml) offline. `--suite NAME_OR_YAML` takes a
suite (eval/suites/*.yaml or a file of the same keys); command-line options override the suite. Also runs with
plain `python`. `python eval/run.py --help` lists the options.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import datasets  # noqa: E402
import evaluate  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from sink_models.errors import InputError
from sink_models.evaluation.cards import render_card, write_card  # noqa: E402
from sink_models.evaluation.evaluate import (  # noqa: E402
    EvalArguments,
    checkpoint_name,
    evaluate_checkpoint,
    load_checkpoint,
)
from sink_models.files import finite, write_json  # noqa: E402
from sink_models.hub.leaderboard import leaderboard_record, markdown, table  # noqa: E402
from sink_models.paper.comparison import DATASET as CANVAS  # noqa: E402
from sink_models.paper.comparison import write_images  # noqa: E402
from sink_models.paper.interventions import causal_runs, write_interventions  # noqa: E402
from sink_models.paper.synthetic import synthetic_rows, write_synthetic  # noqa: E402
from sink_models.processes import exit_launched  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUITES = Path(__file__).with_name("suites")
METRIC = Path(__file__).with_name("metrics") / "top_k_accuracy"
TEMPLATE = ROOT / "model_cards" / "template.md"
USER_OUTPUTS = {"results_dir": "runs/eval/results", "cards_dir": "runs/eval/cards"}  # relative to the working folder


def parse(argv: list[str]) -> EvalArguments:
    parser = HfArgumentParser(EvalArguments, allow_abbrev=False)
    suites = sorted(p.stem for p in SUITES.glob("*.yaml"))
    parser.add_argument("--suite", default=None, help=f"one of {suites} or a YAML file")
    known = parser.parse_known_args(argv)[0]
    suite = known.suite or (None if known.model else "zoo")  # no models named: the shipped zoo
    builtin = suite is not None and not suite.endswith((".yaml", ".yml"))
    # The repository's suites, on their own models, regenerate its results/ and model_cards/; any other run (models
    # named on the command line, a suite of one's own) writes only to its own folders.
    own_models = any(getattr(known, key) for key in ("model", "synthetic_models", "intervention_models"))
    repository = builtin and not own_models
    outputs = {"results_dir": "results", "cards_dir": "model_cards"} if repository else USER_OUTPUTS
    parser.set_defaults(**{key: os.path.relpath(ROOT / v) if repository else v for key, v in outputs.items()})
    if suite is not None:
        path = SUITES / f"{suite}.yaml" if builtin else Path(suite)
        if not path.is_file():
            raise InputError(f"--suite: no suite {suite!r}; allowed: {suites} or a YAML file")
        values = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(values) - set(EvalArguments.__dataclass_fields__))
        if unknown:
            raise InputError(
                f"{path}: unknown keys {unknown}; allowed: {', '.join(EvalArguments.__dataclass_fields__)}"
            )
        if builtin:  # the built-in suites name the repository's zoo and folders, wherever the command runs
            for key in ("model", "synthetic_models", "intervention_models"):
                values[key] = [os.path.relpath(ROOT / item) for item in values.get(key, [])]
            for key in ("results_dir", "cards_dir"):
                if key in values and not repository:
                    del values[key]  # the suite's folders are the repository's; own models keep USER_OUTPUTS
            for key in ("results_dir", "cards_dir", "work_dir"):
                if key in values:
                    values[key] = os.path.relpath(ROOT / values[key])
        parser.set_defaults(**values)
    args, _, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)  # _: --suite
    if rest:
        raise InputError(f"unknown options {rest}; see --help")
    for key in ("results_dir", "cards_dir"):
        if os.path.exists(getattr(args, key)) and not os.path.isdir(getattr(args, key)):
            raise InputError(f"{key}: {getattr(args, key)!r} is a file; allowed: a folder (made if missing).")
        if not repository:
            _outside_repository_outputs(key, getattr(args, key))
    return args


def _outside_repository_outputs(option: str, folder: str) -> None:
    """Refuse a user's run writing into the repository's results/ or model_cards/ (the zoo suites' own)."""
    path, suites = Path(folder).resolve(), ", ".join(sorted(p.stem for p in SUITES.glob("*.yaml")))
    for owned in (ROOT / "results", ROOT / "model_cards"):
        if path == owned or owned in path.parents:
            raise InputError(
                f"{option}: {folder!r} is the repository's {owned.name}/, which only its suites regenerate "
                f"(eval/run.py with no --model, or --suite {{{suites}}} on its own models); "
                f"allowed: any other folder (default: {USER_OUTPUTS[option]})."
            )


def with_undefined_named(result: dict) -> dict:
    """`result` with NaN / inf (a model whose activations overflow) as None, their places listed in `non_finite`."""
    result, undefined = finite(result)
    undefined += [path.replace("summary.", "sinks.", 1) for path in result["sinks"].get("non_finite", [])]
    if undefined:
        result["non_finite"] = places = sorted(set(undefined))
        if os.environ.get("RANK", "0") == "0":
            shown = ", ".join(places[:3])
            print(f"warning: {result['name']}: {len(places)} figures are NaN or inf ({shown}, ...), written as null")
    return result


def in_zoo(source: str) -> bool:
    return os.path.isdir(source) and ROOT / "zoo" in Path(source).resolve().parents


def main(argv: list[str]) -> int:
    args = parse(argv)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()  # one progress bar: the images evaluated
    accelerator = Accelerator()
    if args.retrain_steps and accelerator.num_processes > 1:
        raise InputError("retrain_steps: retrain the synthetic models with one process (python eval/run.py ...).")
    names = [checkpoint_name(source) for source in args.model]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"model: two checkpoints would both be written as {repeated}; evaluate them in separate runs.")
    metric = evaluate.load(str(METRIC))
    # Everything is measured before anything is written: bad input anywhere leaves no file behind.
    evaluated, cards = [], []
    started = time.monotonic()

    def say(line: str) -> None:
        """A stage line on the main process, with the time since the start: the run never goes silent."""
        if accelerator.is_main_process:
            minutes, seconds = divmod(int(time.monotonic() - started), 60)
            print(f"{minutes}:{seconds:02d} {line}")

    opt_in = [name for name, on in (("interventions", args.interventions), ("dense probe", args.dense_probe)) if on]
    for number, source in enumerate(args.model, 1):
        trusted = args.trust_remote_code or in_zoo(source)  # remote code: asked for, or this repository's zoo
        checkpoint = load_checkpoint(
            source, revision=args.revision, trust_remote_code=trusted, attn_implementation=args.attn_implementation
        )
        say(f"[{number}/{len(args.model)}] {source}: accuracy and sinks{''.join(', ' + n for n in opt_in)}")
        result, report = evaluate_checkpoint(checkpoint, args, metric, accelerator, accelerator.is_local_main_process)
        result["model"]["zoo"] = in_zoo(source)
        result = with_undefined_named(result)
        del checkpoint
        if accelerator.is_main_process:
            cards.append(render_card(result, report, TEMPLATE, args.hub_org, args.hub_revision))
        evaluated.append((result, report))
    synthetic = None
    if args.synthetic_models and accelerator.is_main_process:
        say(f"synthetic tasks: {len(args.synthetic_models)} models, per-layer signatures")
        work_dir = Path(args.work_dir)
        synthetic = synthetic_rows(args.synthetic_models, args.retrain_steps, args.seeds, work_dir, progress=True)
    causal = None
    if args.intervention_models and accelerator.is_main_process:
        say(f"interventions: {len(args.intervention_models)} models, one sink head edited at a time")
        trusted = [args.trust_remote_code or in_zoo(source) for source in args.intervention_models]
        causal = causal_runs(args.intervention_models, args.intervention_images, trusted, progress=True)
    if accelerator.is_main_process:
        say(f"writing results to {args.results_dir}/ and model cards to {args.cards_dir}/")
        write_outputs(args, evaluated, cards, synthetic, causal)
        say("done")
    accelerator.wait_for_everyone()
    return 0


def write_outputs(args: EvalArguments, evaluated: list, cards: list, synthetic, causal) -> None:
    """Every file of the run, once everything was measured; then the local leaderboard's table."""
    results = Path(args.results_dir)
    pairs = list(zip(evaluated, cards, strict=True))
    for (result, report), card in tqdm(pairs, desc="results and cards", unit="model"):
        write_json(results / f"{result['name']}.json", result)
        write_card(card, report, Path(args.cards_dir) / result["name"])
    if synthetic is not None:
        write_synthetic(synthetic, results, args.retrain_steps)
    if causal is not None:
        write_interventions(causal, results, args.intervention_images)
    if any((result.get("training") or {}).get("data", {}).get("dataset") == CANVAS for result, _ in evaluated):
        write_images(results)  # over every seed with results there, not only this run's
    if evaluated:
        records = [leaderboard_record(result, result["name"], None) for result, _ in evaluated]
        print(markdown(table(records)))  # the local leaderboard: the Hub leaderboard's table


def cli(argv: list[str]) -> int:
    """main(), with bad input reported as one line on stderr and exit code 2."""
    try:
        return main(argv)
    except InputError as error:
        if os.environ.get("RANK", "0") == "0":  # every process meets the same bad input; one of them says so
            print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    code = cli(sys.argv[1:])
    exit_launched(code)
    sys.exit(code)

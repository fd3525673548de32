"""Publish the zoo: `python push/run.py --org ORG [--endpoint URL] [--private] [--dry-run] [NAMES ...]`.

One model repo per zoo checkpoint (ORG/<name>: weights, config, remote code, image processor, card with its
figures, `.eval_results`, results, recipe) tagged with the zoo's version, then the results dataset
ORG/sink-zoo-results (one record per model, and results/synthetic.json as it is), the leaderboard Space
ORG/sink-zoo-leaderboard (spaces/leaderboard/), the sink inspector Space ORG/sink-zoo-inspector (spaces/inspector/
with a copy of sink_models and the ids of the models pushed) and the collection "Attention-sink ViT zoo" of them all. A
model repo's new version drops the files of the old one that it lacks; the old version stays under its tag.
The token comes from HF_TOKEN or the `hf auth login` store and is never printed. `--dry-run` only reads.
A repo whose files all match is left alone (no parity check, no commit). Commits made are logged to
runs/push_log.jsonl (not uploaded). Any failure ends the run with one line: `error: REPO: STEP: ...`.
"""

import argparse
import json
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from fnmatch import fnmatch
from functools import partial
from pathlib import Path

from huggingface_hub import HfApi, get_token

from sink_models.errors import InputError
from sink_models.evaluation.cards import ZOO_VERSION
from sink_models.hub.leaderboard import leaderboard_record
from sink_models.hub.publish import (
    COLLECTION,
    INSPECTOR,
    RESULTS_DATASET,
    SPACE,
    Change,
    HubError,
    add_to_collection,
    append_push_log,
    collection_plan,
    parity_check,
    plan,
    push_folder,
    retried,
    stage_inspector,
    stage_model,
    stage_space,
    tag_commit,
)

ROOT = Path(__file__).resolve().parents[1]
# The zoo's image classifiers: the folders with their own remote code (the synthetic-task models have none).
ZOO = sorted(p.parent.name for p in (ROOT / "zoo").glob("*/modeling_sink_vit.py"))
# The dataset's config: the model records only (DESIGN.md names every zoo model vit-*). synthetic.json, of another
# shape, gets no config: `datasets` reads a JSON object's `field` through pandas' ujson at 10 decimals, which turns
# its smallest figures (1e-13) into 0.
RECORDS = "vit-*.json"
SYNTHETIC = ROOT / "results" / "synthetic.json"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("names", nargs="*", metavar="NAMES", help=f"zoo models (default: all of {', '.join(ZOO)})")
    parser.add_argument("--org", required=True, help="the user or organisation to publish under")
    parser.add_argument("--endpoint", default=None, help="a Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--private", action="store_true", help="create the repos private")
    parser.add_argument("--dry-run", action="store_true", help="print what would be created or changed; change nothing")
    parser.add_argument("--retry-wait", type=float, default=2.0, help="seconds before the first retry (doubling)")
    parser.add_argument(
        "--log", default=str(ROOT / "runs" / "push_log.jsonl"), help="the local push log (not uploaded)"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in ZOO]
    if unknown:
        parser.error(f"unknown zoo models {unknown}; allowed: {', '.join(ZOO)}")
    args.names = args.names or ZOO
    unlisted = [name for name in args.names if not fnmatch(f"{name}.json", RECORDS)]
    if unlisted:
        parser.error(f"zoo models {unlisted} are not named vit-*: the results dataset's config loads {RECORDS} only")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    if not SYNTHETIC.exists():  # checked before anything is written
        raise InputError(f"missing {SYNTHETIC}; run eval/run.py first.")
    token = get_token()  # HF_TOKEN, else the `hf auth login` store
    if token is None and not args.dry_run:
        raise InputError("no token: set HF_TOKEN or run `hf auth login` (a write token for the org).")
    api = HfApi(endpoint=args.endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="sink-models-push-") as staging:
        records = {name: _push_model(api, args, name, Path(staging)) for name in args.names}
        items = [(f"{args.org}/{name}", "model") for name in args.names]
        items += _push_results_and_spaces(api, args, records, Path(staging))
        retry = {"wait": args.retry_wait}
        if args.dry_run:
            print(retried(partial(collection_plan, api, args.org, items), f"{args.org}: collection read", **retry))
            return 0
        added = add_to_collection(api, args.org, items, private=args.private, **retry)
        print(f"collection {COLLECTION!r}: {added} item(s) added, {len(items) - added} present")
    return 0


def _push_model(api: HfApi, args: argparse.Namespace, name: str, staging: Path) -> dict:
    """Stage, check and push (or with --dry-run describe) one zoo model's repo; its leaderboard record."""
    repo_id, retry = f"{args.org}/{name}", {"wait": args.retry_wait}
    folder = stage_model(name, repo_id, ROOT, staging)
    result = json.loads((folder / "results.json").read_text())
    read = partial(plan, api, repo_id, folder, tag=ZOO_VERSION, mirror=True)
    change = retried(read, f"{repo_id}: read", **retry)
    stuck = change.exists and change.dirty and change.tag is None
    if args.dry_run:
        print(change.describe() + (f" (refused: tag {ZOO_VERSION} is published)" if stuck else ""))
        return leaderboard_record(result, repo_id, "(new)" if change.dirty else change.head)
    if stuck:  # checked before anything is written to this repo
        raise InputError(
            f"{repo_id}: {', '.join(change.changed + change.removed)} changed, but tag {ZOO_VERSION} is "
            "already published; a version never moves: raise sink_models.evaluation.cards.ZOO_VERSION."
        )
    parity = ""
    if change.dirty:  # the fresh-process reload takes seconds: worth it only before a commit
        parity = f" (parity {parity_check(folder, ROOT / 'zoo' / name):.1e})"
    message = f"sink-models zoo {ZOO_VERSION}: {name}"
    commit = _push(api, change, folder, message, Path(args.log), ZOO_VERSION, private=args.private, **retry)
    state = "created" if tag_commit(api, repo_id, ZOO_VERSION, commit, **retry) else "present"
    print(f"{repo_id}: {_at(change, commit)}{parity}; tag {ZOO_VERSION} {state}")
    return leaderboard_record(result, repo_id, commit)


def _push_results_and_spaces(api: HfApi, args: argparse.Namespace, records: dict, staging: Path) -> list:
    """Stage and push (or describe) the results dataset and the two Spaces; their collection items."""
    dataset_id = f"{args.org}/{RESULTS_DATASET}"
    folder = staging / RESULTS_DATASET
    folder.mkdir()
    for name, record in records.items():
        (folder / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.copyfile(SYNTHETIC, folder / SYNTHETIC.name)  # the leaderboard's task rows, as eval/run.py wrote them
    (folder / "README.md").write_text(_dataset_card(args.org))
    space_id, inspector_id = f"{args.org}/{SPACE}", f"{args.org}/{INSPECTOR}"
    space = stage_space(ROOT / "spaces" / "leaderboard", dataset_id, staging / SPACE)
    zoo = [f"{args.org}/{name}" for name in args.names]
    inspector = stage_inspector(ROOT / "spaces" / "inspector", zoo, staging / INSPECTOR)
    retry = {"wait": args.retry_wait}
    for repo_id, kind, source, message in (
        (dataset_id, "dataset", folder, "sink-models zoo results"),
        (space_id, "space", space, "sink-models leaderboard"),
        (inspector_id, "space", inspector, "sink-models inspector"),
    ):
        change = retried(partial(plan, api, repo_id, source, repo_type=kind), f"{repo_id}: read", **retry)
        if args.dry_run:
            print(change.describe())
            continue
        commit = _push(api, change, source, message, Path(args.log), None, private=args.private, **retry)
        print(f"{kind} {repo_id}: {_at(change, commit)}")
    return [(dataset_id, "dataset"), (space_id, "space"), (inspector_id, "space")]


def _push(api: HfApi, change: Change, folder: Path, message: str, log: Path, tag: str | None, **options) -> str:
    """Commit `folder` if the plan found changes and log the commit; returns the repo's head."""
    if not change.dirty:
        return change.head
    commit = push_folder(
        api, change.repo_id, folder, repo_type=change.repo_type, message=message, delete=change.removed, **options
    )
    if commit != change.head:  # the client makes no commit when the Hub has every file already
        append_push_log(log, _entry(change.repo_id, change.repo_type, commit, tag))
    return commit


def _at(change: Change, commit: str) -> str:
    return f"at {commit[:12]}" if change.dirty else f"unchanged at {commit[:12]}"


def _entry(repo_id: str, repo_type: str, commit: str, tag: str | None) -> dict:
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"repo_id": repo_id, "repo_type": repo_type, "commit": commit, "tag": tag, "date": when}


def _dataset_card(org: str) -> str:
    return (
        "---\nlicense: apache-2.0\ntags:\n- attention-sinks\n- leaderboard\nconfigs:\n- config_name: default\n"
        f"  data_files: '{RECORDS}'\n---\n\n# sink-zoo-results\n\n"
        f"Accuracy and attention-sink metrics of the `{org}` sink-models zoo, one JSON file per checkpoint in the "
        "demo-leaderboard format (`config`: model name, sha and dtype; `results`: per task, per metric), plus the "
        "sink metrics (sinks, NOP and broadcast sinks per image; CLS / register / patch shares). `synthetic.json` "
        "holds the synthetic-task findings (`rows`: one per model and layer), as `eval/run.py` wrote them.\n"
    )


def cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except (InputError, HubError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))

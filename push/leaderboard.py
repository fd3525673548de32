"""Print the leaderboard as Markdown: `python push/leaderboard.py --org ORG [--endpoint URL] [--group-seeds]` (the
org's results dataset) or `--results FOLDER` (a local folder of result records, as push/run.py writes them): the
image-model table, then the task-model table when the results hold synthetic.json."""

import argparse
import sys

from huggingface_hub import constants

from sink_models.errors import first_line
from sink_models.hub.leaderboard import (
    SPREAD_NOTE,
    TASK_NOTE,
    by_recipe,
    by_task_model,
    group_seeds,
    load_records,
    load_task_rows,
    markdown,
    table,
    task_table,
)
from sink_models.hub.publish import RESULTS_DATASET


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--org", help=f"read ORG/{RESULTS_DATASET} from the Hub")
    source.add_argument("--results", help="a local folder of result records (*.json)")
    parser.add_argument("--endpoint", default=None, help="a Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--group-seeds", action="store_true", help="one row per recipe: mean ± sample std (n - 1)")
    args = parser.parse_args(argv)
    results = args.results or f"{args.org}/{RESULTS_DATASET}"
    try:
        records = load_records(results, endpoint=args.endpoint)
        tasks = task_table(load_task_rows(results, endpoint=args.endpoint))
    except Exception as error:  # noqa: BLE001 -- any failure to read the results is reported in one line
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 1
    images = table(records)
    if args.group_seeds:
        images, tasks = group_seeds(images, by_recipe), group_seeds(tasks, by_task_model)
    print(markdown(images, link=(args.endpoint or constants.ENDPOINT) if args.org else None))
    if tasks:
        print(f"\n{TASK_NOTE}\n\n{markdown(tasks)}")
    if args.group_seeds:
        print(f"\n{SPREAD_NOTE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

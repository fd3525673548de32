"""Print the leaderboard as Markdown: `python upload/leaderboard.py --org ORG [--endpoint URL]` (the org's results
dataset) or `--results FOLDER` (a local folder of result records, as upload/push.py writes them)."""

import argparse
import sys

from huggingface_hub import constants

from sink_models.errors import first_line
from sink_models.hub import RESULTS_DATASET
from sink_models.leaderboard import load_records, markdown, table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--org", help=f"read ORG/{RESULTS_DATASET} from the Hub")
    source.add_argument("--results", help="a local folder of result records (*.json)")
    parser.add_argument("--endpoint", default=None, help="a Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    args = parser.parse_args(argv)
    try:
        records = load_records(args.results or f"{args.org}/{RESULTS_DATASET}", endpoint=args.endpoint)
    except Exception as error:  # noqa: BLE001 -- any failure to read the results is reported in one line
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 1
    print(markdown(table(records), link=(args.endpoint or constants.ENDPOINT) if args.org else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

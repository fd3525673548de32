"""The attention-sink ViT zoo leaderboard (a Gradio app; the Hub's leaderboard Space runs this file).

Locally: `python spaces/leaderboard/app.py --results PATH_OR_REPO [--endpoint URL] [--cards FOLDER] [--port N]`, where
PATH_OR_REPO is a results dataset (`org/sink-zoo-results`) or a folder of its JSON records (or of eval/run.py's
results), with its synthetic.json if it has one. On the Hub the Space reads the dataset named in its results_repo.txt
(or its RESULTS variable).
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the app also runs offline

try:
    import gradio as gr
    import pandas as pd
except ModuleNotFoundError as missing:  # the Space's packages are an extra of the library
    raise SystemExit(f"{__file__}: needs {missing.name}; install the hub extra: pip install -e '.[hub]'") from None
from huggingface_hub import constants, hf_hub_download  # noqa: E402

try:
    from sink_models.hub import leaderboard
except ImportError:  # in the Space: push/run.py ships a copy of sink_models/hub/leaderboard.py beside this file
    import leaderboard

INTRO = """# Attention-sink ViT zoo

Accuracy and the attention sinks of every checkpoint, per image: sink events, adaptive NOPs (a head routes to a
token with a negligible value to do nothing) and broadcasts (a sink hands global information to every token), and
where the sinks sit (CLS, register or patch token). Cost columns: GFLOPs of one image's forward and measured
forward images/s. Stability columns: the largest activation and the loss spikes while training (models trained
here), the largest token-norm max / median over layers on the evaluated images. Runs of one recipe that differ only in
seed share a `recipe` digest; "Group seeds" shows one row per recipe. Sort with a column header's menu; filter by
name or variant. The synthetic-task models follow below the figures."""


def pictures_for(cards: Path | None, endpoint: str | None):
    """model name -> its sink figures: from the model repo on the Hub, or from a local folder of model cards."""

    def pictures(model: str) -> list[tuple[str, str]]:
        found = []
        for name in leaderboard.FIGURES:
            if cards is not None:
                path = cards / model.split("/")[-1] / name
                if path.is_file():
                    found.append((str(path), name))
                continue
            try:
                found.append((hf_hub_download(model, name, endpoint=endpoint), name))
            except Exception:  # noqa: BLE001 -- a model without that figure shows the others
                continue
        return found

    return pictures


def build(records: list[dict], pictures, link: str | None = None, task_rows: list[dict] | None = None) -> gr.Blocks:
    """The app: the image-model table, its scatter plot and figures, then the task-model table when `task_rows`
    (synthetic.json's rows) are given; with `link` (a Hub URL) each model name links to its repo."""
    rows = leaderboard.table(records)
    frame = pd.DataFrame(rows)
    repos = set(frame["model"])
    tasks = leaderboard.task_table(task_rows or [])
    variants = sorted(v for v in frame["variant"].dropna().unique())

    def images(text: str, chosen: list[str], grouped: bool) -> dict:
        """The image table's value and column types: the rows the filters keep, grouped by recipe if asked."""
        keep = frame["model"].str.contains(text or "", case=False, regex=False)
        if chosen:
            keep &= frame["variant"].isin(chosen)
        kept = [row for row, wanted in zip(rows, keep, strict=True) if wanted]
        shown = leaderboard.group_seeds(kept, leaderboard.by_recipe) if grouped else kept
        view = pd.DataFrame(shown, columns=list(shown[0]) if shown else frame.columns)
        if link:  # a group is named after its members less -seedN: only the pushed models' names are repos
            view["model"] = [f"[{n}]({link.rstrip('/')}/{n})" if n in repos else n for n in view["model"]]
        return {"value": view, "datatype": ["markdown" if link else "str"] + ["str"] * (view.shape[1] - 1)}

    def task_models(grouped: bool) -> pd.DataFrame:
        return pd.DataFrame(leaderboard.group_seeds(tasks, leaderboard.by_task_model) if grouped else tasks)

    with gr.Blocks(title="Attention-sink ViT zoo") as app:
        gr.Markdown(INTRO)
        with gr.Row():
            search = gr.Textbox(label="Filter by model name", elem_id="search")
            variant = gr.Dropdown(choices=variants, multiselect=True, label="Variant", elem_id="variant")
            group = gr.Checkbox(label="Group seeds", info=leaderboard.SPREAD_NOTE, elem_id="group-seeds")
        board = gr.Dataframe(**images("", [], False), interactive=False, elem_id="leaderboard", wrap=True)
        for control in (search, variant, group):
            # The grouped table has one more column (seeds), so its column types change with it.
            control.change(lambda *chosen: gr.Dataframe(**images(*chosen)), [search, variant, group], board)
        with gr.Row():
            with gr.Column():
                model = gr.Dropdown(choices=list(frame["model"]), value=frame["model"].iloc[0], label="Model")
                gallery = gr.Gallery(label="Sink pictures", columns=3, height=300)
            gr.ScatterPlot(frame, x="sinks / img", y="top-1", color="variant", title="Top-1 vs sinks / img")
        model.change(pictures, model, gallery)
        app.load(pictures, model, gallery)
        if tasks:
            gr.Markdown(f"## Task models\n\n{leaderboard.TASK_NOTE}")
            group_tasks = gr.Checkbox(label="Group seeds", info=leaderboard.SPREAD_NOTE, elem_id="group-task-seeds")
            task_board = gr.Dataframe(value=task_models(False), interactive=False, elem_id="task-models", wrap=True)
            group_tasks.change(task_models, group_tasks, task_board)
    return app


def default_results() -> str | None:
    """The RESULTS variable, else the dataset named in results_repo.txt, which push/run.py writes into the Space."""
    named = Path(__file__).with_name("results_repo.txt")
    return os.environ.get("RESULTS") or (named.read_text().strip() if named.is_file() else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=default_results(), help="a results dataset id or folder")
    parser.add_argument("--endpoint", default=None, help="a Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--cards", default=None, help="a local folder of model cards with their figures")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    if not args.results:
        parser.error("--results (or the RESULTS variable): a results dataset id or a folder of records")
    records = leaderboard.load_records(args.results, endpoint=args.endpoint)
    task_rows = leaderboard.load_task_rows(args.results, endpoint=args.endpoint)
    cards = Path(args.cards) if args.cards else None
    link = None if Path(args.results).is_dir() else (args.endpoint or constants.ENDPOINT)
    app = build(records, pictures_for(cards, args.endpoint), link, task_rows)
    # On a Space, GRADIO_SERVER_NAME is 0.0.0.0; locally the app listens on this machine only.
    app.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=args.port)


if __name__ == "__main__":
    main()

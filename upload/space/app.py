"""The attention-sink ViT zoo leaderboard (a Gradio app; the Hub's leaderboard Space runs this file).

Locally: `python upload/space/app.py --results PATH_OR_REPO [--endpoint URL] [--cards FOLDER] [--port N]`, where
PATH_OR_REPO is a results dataset (`org/sink-zoo-results`) or a folder of its JSON records (or of eval/run.py's
results). On the Hub the Space reads the dataset named in its results_repo.txt (or its RESULTS variable).
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the app also runs offline

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from huggingface_hub import constants, hf_hub_download  # noqa: E402

try:
    from sink_models.leaderboard import FIGURES, load_records, table
except ImportError:  # in the Space: upload/push.py ships a copy of sink_models/leaderboard.py beside this file
    from leaderboard import FIGURES, load_records, table

INTRO = """# Attention-sink ViT zoo

Accuracy and the attention sinks of every checkpoint, per image: sink events, adaptive NOPs (a head routes to a
token with a negligible value to do nothing) and broadcasts (a sink hands global information to every token), and
where the sinks sit (CLS, register or patch token). Cost columns: GFLOPs of one image's forward and measured
forward images/s. Sort with a column header's menu; filter by name or variant."""


def pictures_for(cards: Path | None, endpoint: str | None):
    """model name -> its sink figures: from the model repo on the Hub, or from a local folder of model cards."""

    def pictures(model: str) -> list[tuple[str, str]]:
        found = []
        for name in FIGURES:
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


def build(records: list[dict], pictures, link: str | None = None) -> gr.Blocks:
    """The app; with `link` (a Hub URL) each model name links to its repo."""
    frame = pd.DataFrame(table(records))
    shown = frame.copy()
    if link:
        shown["model"] = [f"[{name}]({link.rstrip('/')}/{name})" for name in frame["model"]]
    variants = sorted(v for v in frame["variant"].dropna().unique())

    def filtered(text: str, chosen: list[str]) -> pd.DataFrame:
        keep = frame["model"].str.contains(text or "", case=False, regex=False)
        if chosen:
            keep &= frame["variant"].isin(chosen)
        return shown[keep]

    with gr.Blocks(title="Attention-sink ViT zoo") as app:
        gr.Markdown(INTRO)
        with gr.Row():
            search = gr.Textbox(label="Filter by model name", elem_id="search")
            variant = gr.Dropdown(choices=variants, multiselect=True, label="Variant", elem_id="variant")
        kinds = ["markdown" if link else "str"] + ["str"] * (len(frame.columns) - 1)
        board = gr.Dataframe(value=shown, datatype=kinds, interactive=False, elem_id="leaderboard", wrap=True)
        search.change(filtered, [search, variant], board)
        variant.change(filtered, [search, variant], board)
        with gr.Row():
            with gr.Column():
                model = gr.Dropdown(choices=list(frame["model"]), value=frame["model"].iloc[0], label="Model")
                gallery = gr.Gallery(label="Sink pictures", columns=3, height=300)
            gr.ScatterPlot(frame, x="sinks / img", y="top-1", color="variant", title="Top-1 vs sinks / img")
        model.change(pictures, model, gallery)
        app.load(pictures, model, gallery)
    return app


def default_results() -> str | None:
    """The RESULTS variable, else the dataset named in results_repo.txt, which upload/push.py writes into the Space."""
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
    records = load_records(args.results, endpoint=args.endpoint)
    cards = Path(args.cards) if args.cards else None
    link = None if Path(args.results).is_dir() else (args.endpoint or constants.ENDPOINT)
    app = build(records, pictures_for(cards, args.endpoint), link)
    # On a Space, GRADIO_SERVER_NAME is 0.0.0.0; locally the app listens on this machine only.
    app.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=args.port)


if __name__ == "__main__":
    main()

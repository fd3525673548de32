"""The attention-sink inspector (a Gradio app; the Hub's inspector Space runs this file): a vision transformer's Hub
id in, its sinks out (summary, per-layer table, layer x head map of events by class, diagnostic plane, per-head
attention maps of any image and layer, the report folder to download).

Locally: `python spaces/inspector/app.py [--endpoint URL] [--cache FOLDER] [--port N]`. On the Hub the Space lists
the zoo models named in its zoo_models.txt, which push/run.py writes.
"""

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the app also runs offline

try:
    import gradio as gr
    import pandas as pd
except ModuleNotFoundError as missing:  # the Space's packages are an extra of the library
    raise SystemExit(f"{__file__}: needs {missing.name}; install the hub extra: pip install -e '.[hub]'") from None
from runner import Entry, Inspector  # noqa: E402

from sink_models.diagnostics.plots import (
    FIGURES,  # noqa: E402
    busiest_layer,  # noqa: E402
)
from sink_models.inspection import tables  # noqa: E402

# The display order: the wide layer x head map alone, then the diagnostic plane beside the token types.
NAMES = ["events_by_head.png", "diagnostic_plane.png", "sink_types_by_layer.png"]
INTRO = """# Attention-sink inspector

Type the Hub id of a vision transformer (DINOv2, DINOv3, ViT, CLIP, SigLIP, ... or a sink-models SinkViT) and see
its attention sinks: which layers and heads send most of their attention to one token, whether that sink is an
**adaptive NOP** (its value is about zero: the head does nothing) or a **broadcast** (one vector handed to every
token), and whether it sits on the CLS token, a register or a patch.

This Space never runs a checkpoint's own code: it fetches only the config, the image processor's config and the
safetensors weights, and refuses a config that asks for other code. Limits: {limits}. Without uploaded images it uses
{builtin}."""


def build(inspector: Inspector, zoo: list[str] | None = None) -> gr.Blocks:
    """The app: the inputs, then the results of the last run; `zoo` (Hub ids) are offered for one click."""
    from sink_models.inspection import DESCRIPTION

    # Gradio's copies of uploads and of the files it serves: removed an hour after they were made.
    with gr.Blocks(title="Attention-sink inspector", delete_cache=(600, 3600)) as app:
        gr.Markdown(INTRO.format(limits=inspector.limits.text(), builtin=DESCRIPTION))
        inputs, run, buttons = _inputs(inspector.limits.images, zoo or [])
        status, key = gr.Markdown(elem_id="status"), gr.State()
        results = _results()
        image, layer, attention = results["image"], results["layer"], results["attention"]
        with gr.Accordion("Publish a results row (opt-in)", open=False):
            dataset = gr.Textbox(label="Results dataset", placeholder="your-org/sink-inspections", elem_id="dataset")
            token = gr.Textbox(label="Hub write token (used for this request only)", type="password", elem_id="token")
            publish = gr.Button("Publish", elem_id="publish")
            published = gr.Markdown(elem_id="published")
        outputs = [status, key, *results.values()]

        def inspect(model: str, rev: str, uploads, most: float, progress=gr.Progress()) -> list:  # noqa: B008
            try:
                found = inspector.images([str(path) for path in uploads or []], int(most))
                entry = inspector.run(model, rev, found, lambda done, text: progress(done, desc=text))
                return _shown(inspector, entry)
            except Exception as error:  # noqa: BLE001 -- one request's failure never takes the app down
                return _failed(inspector.message(error))

        def draw(current: str | None, chosen, number: float) -> tuple:
            if current is None or chosen is None:
                return gr.skip(), gr.skip()
            try:
                return inspector.attention(current, int(chosen), int(number)), gr.skip()
            except Exception as error:  # noqa: BLE001 -- shown in the page, the app stays up
                return None, f"**{inspector.message(error)}**"

        def share(current: str | None, where: str | None, secret: str | None) -> str:
            try:
                return f"Published: `{inspector.publish(current, where, secret)}` in the dataset `{where.strip()}`."
            except Exception as error:  # noqa: BLE001 -- shown in the page, the app stays up
                return f"**{inspector.message(error)}**"

        run.click(inspect, inputs, outputs)
        inputs[0].submit(inspect, inputs, outputs)
        for button, name in zip(buttons, zoo or [], strict=True):
            button.click(lambda name=name: name, None, inputs[0]).then(inspect, inputs, outputs)
        for control in (image, layer):
            control.input(draw, [key, image, layer], [attention, status])
        publish.click(share, [key, dataset, token], published)
    app.queue(default_concurrency_limit=1, max_size=32)  # one run at a time on the Space's CPU; others wait
    return app


def _inputs(most: int, zoo: list[str]) -> tuple[list, gr.Button, list[gr.Button]]:
    """The model id, revision, images and image count; the run button; one button per zoo model."""
    with gr.Row():
        model_id = gr.Textbox(
            label="Model id", placeholder="facebook/dinov2-small", max_lines=1, max_length=96, elem_id="model-id"
        )
        revision = gr.Textbox(label="Revision (optional)", placeholder="main", max_lines=1, elem_id="revision")
        count = gr.Slider(1, most, value=min(8, most), step=1, label="Max images", elem_id="max-images")
    with gr.Row():
        files = gr.File(label="Images (optional)", file_count="multiple", file_types=["image"], elem_id="images")
        run = gr.Button("Inspect", variant="primary", elem_id="inspect")
    buttons = []
    if zoo:
        with gr.Row():
            gr.Markdown("Zoo models, one click:")
            buttons = [gr.Button(name.split("/")[-1], size="sm", elem_id=f"zoo-{i}") for i, name in enumerate(zoo)]
    return [model_id, revision, files, count], run, buttons


def _results() -> dict:
    """The result components, in the order `_shown` fills them."""
    shown = {"summary": gr.Markdown(elem_id="summary")}
    shown["layers"] = gr.Dataframe(
        headers=list(tables.LAYER_HEADER), label="Sink events per image, by layer", elem_id="layers"
    )
    # No floating label: it would cover the start of the figure's own title.
    figure = {"type": "filepath", "show_label": False}
    shown[NAMES[0]] = gr.Image(label=FIGURES[NAMES[0]], height=340, elem_id=NAMES[0][:-4], **figure)
    with gr.Row():  # the layer x head map is wide: a row of its own; the other two side by side
        for name in NAMES[1:]:
            shown[name] = gr.Image(label=FIGURES[name], height=420, elem_id=name[:-4], **figure)
    gr.Markdown("## Per-head attention maps\n\nThe mean attention each token receives, per head; red: the sink.")
    with gr.Row():
        shown["image"] = gr.Dropdown(label="Image", choices=[], elem_id="image-choice")
        shown["layer"] = gr.Slider(0, 1, value=0, step=1, label="Layer", elem_id="layer-choice")
    shown["attention"] = gr.Image(label="Attention maps", height=340, elem_id="attention", **figure)
    shown["heads"] = gr.Dataframe(
        headers=list(tables.HEAD_HEADER), label="Sink heads, most events first", elem_id="heads"
    )
    shown["download"] = gr.File(label="Report folder (report.md, report.json, heads.csv, figures)", elem_id="download")
    return shown


def _shown(inspector: Inspector, entry: Entry) -> list:
    """The outputs for a finished run."""
    report, checkpoint = entry.report(), entry.checkpoint
    inputs = report.summary["inputs"]
    lines = "\n".join(f"- {line}" for line in tables.summary_lines(report))
    text = f"**{checkpoint.repo_id}** at commit `{checkpoint.commit[:12]}`: {tables.model_line(report)}.\n\n{lines}"
    busiest = busiest_layer(report)
    images = [(name, index) for index, name in enumerate(inputs["images"])]
    return [
        f"Done: {checkpoint.repo_id}, {checkpoint.parameters:,} parameters, {len(images)} images.",
        entry.key,
        text,
        pd.DataFrame(tables.layer_rows(report), columns=list(tables.LAYER_HEADER)),
        *(str(entry.report_folder / name) for name in NAMES),
        gr.Dropdown(choices=images, value=0),
        gr.Slider(0, report.model["layers"] - 1, value=busiest, step=1),
        str(inspector.attention(entry.key, 0, busiest)),
        pd.DataFrame(tables.sink_head_rows(report)[:50], columns=list(tables.HEAD_HEADER)),
        str(entry.archive),
    ]


def _failed(message: str) -> list:
    """The outputs for a refused or failed run: the one-line message, everything else cleared."""
    cleared = [None, "", pd.DataFrame(columns=list(tables.LAYER_HEADER)), *(None for _ in NAMES)]
    cleared += [gr.Dropdown(choices=[], value=None), gr.Slider(0, 1, value=0), None]
    cleared += [pd.DataFrame(columns=list(tables.HEAD_HEADER)), None]
    return [f"**{message}**", *cleared]


def zoo_models() -> list[str]:
    """The zoo's Hub ids, from zoo_models.txt, which push/run.py writes into the Space."""
    named = Path(__file__).with_name("zoo_models.txt")
    return named.read_text().split() if named.is_file() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=None, help="a Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "sink-inspector"), help="report cache")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    inspector = Inspector(Path(args.cache), endpoint=args.endpoint)
    # On a Space, GRADIO_SERVER_NAME is 0.0.0.0; locally the app listens on this machine only.
    build(inspector, zoo_models()).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=args.port,
        allowed_paths=[str(inspector.cache)],
        max_file_size="20mb",
    )


if __name__ == "__main__":
    main()

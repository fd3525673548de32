"""The attention-sink inspector (a Gradio app; the Hub's inspector Space runs this file): a vision transformer's Hub
id in, its sinks out (summary, per-layer table, layer x head map of events by class, diagnostic plane, per-head
attention maps of any image and layer, the report folder to download).

Locally: `python upload/inspector/app.py [--endpoint URL] [--cache FOLDER] [--port N]`. On the Hub the Space lists
the zoo models named in its zoo_models.txt, which upload/push.py writes.
"""

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the app also runs offline

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from runner import Entry, InspectError, Inspector  # noqa: E402

from sink_models.diagnostics.plots import busiest_layer  # noqa: E402
from sink_models.errors import first_line  # noqa: E402
from sink_models.inspection import tables  # noqa: E402

FIGURES = {
    "events_by_head.png": "Sink events per layer and head, by class (NOP, broadcast, other)",
    "diagnostic_plane.png": "The diagnostic plane: ratio_out against stable rank, one point per sink event",
    "sink_types_by_layer.png": "Sink events per layer, by the sink's token type (CLS, register, patch)",
}
NAMES = list(FIGURES)
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

    limits = inspector.limits
    with gr.Blocks(title="Attention-sink inspector") as app:
        gr.Markdown(INTRO.format(limits=limits.text(), builtin=DESCRIPTION))
        with gr.Row():
            model_id = gr.Textbox(
                label="Model id", placeholder="facebook/dinov2-small", max_lines=1, max_length=96, elem_id="model-id"
            )
            revision = gr.Textbox(label="Revision (optional)", placeholder="main", max_lines=1, elem_id="revision")
            count = gr.Slider(1, limits.images, value=8, step=1, label="Max images", elem_id="max-images")
        with gr.Row():
            files = gr.File(label="Images (optional)", file_count="multiple", file_types=["image"], elem_id="images")
            run = gr.Button("Inspect", variant="primary", elem_id="inspect")
        buttons = []
        if zoo:
            with gr.Row():
                gr.Markdown("Zoo models, one click:")
                buttons = [gr.Button(name.split("/")[-1], size="sm", elem_id=f"zoo-{i}") for i, name in enumerate(zoo)]
        status = gr.Markdown(elem_id="status")
        key = gr.State()
        summary = gr.Markdown(elem_id="summary")
        layers = gr.Dataframe(
            headers=list(tables.LAYER_HEADER), label="Sink events per image, by layer", elem_id="layers"
        )
        # No floating label: it would cover the start of the figure's own title.
        figures = [
            gr.Image(label=FIGURES[NAMES[0]], type="filepath", height=340, show_label=False, elem_id=NAMES[0][:-4])
        ]
        with gr.Row():  # the layer x head map is wide: a row of its own; the other two side by side
            figures += [
                gr.Image(label=FIGURES[name], type="filepath", height=420, show_label=False, elem_id=name[:-4])
                for name in NAMES[1:]
            ]
        gr.Markdown("## Per-head attention maps\n\nThe mean attention each token receives, per head; red: the sink.")
        with gr.Row():
            image = gr.Dropdown(label="Image", choices=[], elem_id="image-choice")
            layer = gr.Slider(0, 1, value=0, step=1, label="Layer", elem_id="layer-choice")
        attention = gr.Image(label="Attention maps", type="filepath", height=340, show_label=False, elem_id="attention")
        heads = gr.Dataframe(headers=list(tables.HEAD_HEADER), label="Sink heads, most events first", elem_id="heads")
        download = gr.File(label="Report folder (report.md, report.json, heads.csv, figures)", elem_id="download")
        with gr.Accordion("Publish a results row (opt-in)", open=False):
            dataset = gr.Textbox(label="Results dataset", placeholder="your-org/sink-inspections", elem_id="dataset")
            token = gr.Textbox(label="Hub write token (used for this request only)", type="password", elem_id="token")
            publish = gr.Button("Publish", elem_id="publish")
            published = gr.Markdown(elem_id="published")

        outputs = [status, key, summary, layers, *figures, image, layer, attention, heads, download]

        def inspect(model: str, rev: str, uploads, most: float, progress=gr.Progress()) -> list:  # noqa: B008
            try:
                found = inspector.images([str(path) for path in uploads or []], int(most))
                entry = inspector.run(model, rev, found, lambda done, text: progress(done, desc=text))
                return _shown(inspector, entry)
            except InspectError as error:
                return _failed(str(error))
            except Exception as error:  # noqa: BLE001 -- one request's failure never takes the app down
                return _failed(f"error: {first_line(error)}")

        def draw(current: str | None, chosen, number: float):
            if current is None or chosen is None:
                return gr.skip(), gr.skip()
            try:
                return inspector.attention(current, int(chosen), int(number)), gr.skip()
            except Exception as error:  # noqa: BLE001 -- shown in the page, the app stays up
                return None, f"**{error if isinstance(error, InspectError) else first_line(error)}**"

        def share(current: str | None, where: str, secret: str) -> str:
            try:
                path = inspector.publish(current, where, secret)
            except InspectError as error:
                return f"**{error}**"
            return f"Published: `{path}` in the dataset `{where.strip()}`."

        inputs = [model_id, revision, files, count]
        run.click(inspect, inputs, outputs)
        model_id.submit(inspect, inputs, outputs)
        for button, name in zip(buttons, zoo or [], strict=True):
            button.click(lambda name=name: name, None, model_id).then(inspect, inputs, outputs)
        for control in (image, layer):
            control.input(draw, [key, image, layer], [attention, status])
        publish.click(share, [key, dataset, token], published)
    app.queue(default_concurrency_limit=1, max_size=32)  # one run at a time on the Space's CPU; others wait
    return app


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
        *(str(entry.report_folder / name) for name in FIGURES),
        gr.Dropdown(choices=images, value=0),
        gr.Slider(0, report.model["layers"] - 1, value=busiest, step=1),
        str(inspector.attention(entry.key, 0, busiest)),
        pd.DataFrame(tables.sink_head_rows(report)[:50], columns=list(tables.HEAD_HEADER)),
        str(entry.archive),
    ]


def _failed(message: str) -> list:
    """The outputs for a refused or failed run: the one-line message, everything else cleared."""
    cleared = [None, "", pd.DataFrame(columns=list(tables.LAYER_HEADER)), *(None for _ in FIGURES)]
    cleared += [gr.Dropdown(choices=[], value=None), gr.Slider(0, 1, value=0), None]
    cleared += [pd.DataFrame(columns=list(tables.HEAD_HEADER)), None]
    return [f"**{message}**", *cleared]


def zoo_models() -> list[str]:
    """The zoo's Hub ids, from zoo_models.txt, which upload/push.py writes into the Space."""
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

"""The interventions' figure, and `sink-models inspect --interventions`: interventions.json against `intervene` run by
hand, the section of report.md and the printed table, the one line for a model without sinks, the one-line errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STOCK_SIZES, assert_nested_close, images, tiny_config
from PIL import Image
from planted import plant
from transformers import AutoImageProcessor, AutoModel, BitImageProcessorPil, Dinov2Config, Dinov2Model

from sink_models import SinkViTForImageClassification
from sink_models.diagnostics import diagnose
from sink_models.errors import InputError
from sink_models.inspection import inspect_model, main
from sink_models.interventions import DEFAULT_EDITS, EDITS, InterventionReport, intervene, select_heads
from sink_models.interventions.plots import CLASS_COLOURS

PNG = b"\x89PNG\r\n\x1a\n"


def _colour_pixels(path: Path, colour) -> int:
    """How many pixels of the PNG are `colour` (a matplotlib colour), to within a little antialiasing."""
    from matplotlib.colors import to_rgb

    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    target = np.array(to_rgb(colour)) * 255
    return int((np.abs(pixels - target).max(-1) < 12).sum())


def _on_white(colour: str, alpha: float) -> tuple:
    from matplotlib.colors import to_rgb

    return tuple(alpha * c + (1 - alpha) for c in to_rgb(colour))


@pytest.fixture(scope="module")
def planted_report() -> InterventionReport:
    """Every edit on a tiny gated SinkViT with registers: a NOP head (0) on CLS, a broadcast head (2) on a register."""
    torch.manual_seed(0)
    model = SinkViTForImageClassification(tiny_config("gated-reg")).eval()
    with torch.no_grad():  # prefix tokens start at zero: give them values, as a trained model has
        for token in (model.sink_vit.embeddings.cls_token, model.sink_vit.embeddings.register_tokens):
            token.normal_()
    x = images(model.config, batch=4)
    plant(model, x, head=0, target=0, kind="nop")
    plant(model, x, head=2, target=1, kind="broadcast")
    batch = {"pixel_values": x, "labels": torch.tensor([0, 1, 2, 3])}
    return intervene(model, [batch], heads=[(0, 0), (0, 2)], edits=EDITS)


@pytest.mark.parametrize("metric", ["final_patch_relrms", "donor_cosine"])
def test_figure_is_a_png_with_bars_and_dots(planted_report, metric, tmp_path):
    path = planted_report.plot(tmp_path / "figure.png", metric=metric)
    assert path == tmp_path / "figure.png" and path.read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]  # written atomically: no temporary left
    width, height = Image.open(path).size
    assert width > 1000 and height > 400  # eight or nine groups of bars
    # Dots (and legend patches) in the classes' full colours; the layer edit register_mean has no donor cosine.
    classes = ("nop", "broadcast", "all") if metric == "final_patch_relrms" else ("nop", "broadcast")
    for name in ("nop", "broadcast", "all"):  # not grey: text and grid lines are grey too
        assert (_colour_pixels(path, CLASS_COLOURS[name]) > 20) == (name in classes), name
    if metric == "final_patch_relrms":  # the broadcast bars, lighter (alpha 0.55 on white), rise to ~1
        assert _colour_pixels(path, _on_white(CLASS_COLOURS["broadcast"], 0.55)) > 5000


def test_figure_of_a_report_read_back_and_of_nothing(planted_report, tmp_path):
    planted_report.to_json(tmp_path / "report.json")
    again = InterventionReport.from_json(tmp_path / "report.json")
    assert again.plot(tmp_path / "again.png").read_bytes() == planted_report.plot(tmp_path / "first.png").read_bytes()
    empty = InterventionReport([], [], {}, {}, {"images": 3}, {"name_or_path": "x"})
    assert empty.plot(tmp_path / "empty.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="metric"):
        planted_report.plot(tmp_path / "bad.png", metric="accuracy")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Two tiny DINOv2 folders with a DINOv2-style processor: `planted` with a NOP head (0) and a broadcast head (2)
    on CLS in layer 0, `random` without any sink on the test's images; and `images`, four PNGs."""
    root = tmp_path_factory.mktemp("causal")
    processor = BitImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    for name, seed in (("planted", 0), ("random", 1)):
        torch.manual_seed(seed)
        model = Dinov2Model(Dinov2Config(**STOCK_SIZES, intermediate_size=64)).eval()
        if name == "planted":
            x = torch.randn(2, 3, 16, 16)
            plant(model, x, head=0, target=0, kind="nop")
            plant(model, x, head=2, target=0, kind="broadcast")
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    (root / "images").mkdir()
    for i in range(4):
        pixels = np.random.default_rng(i).integers(0, 256, (20 + 4 * i, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"img{i}.png")
    return root


def by_hand(folder: Path, image_folder: Path, batch_size: int, **kwargs) -> InterventionReport:
    """`intervene` on the model's own processor outputs, `batch_size` images at a time, without the command."""
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    pictures = [Image.open(path).convert("RGB") for path in sorted(image_folder.iterdir())]
    batches = [
        dict(processor(images=pictures[i : i + batch_size], return_tensors="pt"))
        for i in range(0, len(pictures), batch_size)
    ]
    heads = select_heads(diagnose(model, batches))
    assert heads == [(0, 0), (0, 2)]  # the planted ones
    return intervene(model, batches, heads=heads, **kwargs)


def test_inspect_interventions_equals_intervene_by_hand(models, tmp_path, capsys):
    out = tmp_path / "report"
    argv = [str(models / "planted"), "--images", str(models / "images"), "--out", str(out), "--batch-size", "2"]
    assert main([*argv, "--interventions"]) == 0
    stdout = capsys.readouterr().out
    written = InterventionReport.from_json(out / "interventions.json")
    expected = by_hand(models / "planted", models / "images", batch_size=2, edits=DEFAULT_EDITS)
    for name in ("rows", "heads", "checks", "skipped", "settings", "model"):
        assert_nested_close(getattr(written, name), getattr(expected, name), rel=1e-5, abs=1e-9, where=name)
    assert written.settings["edits"] == list(DEFAULT_EDITS) and len(written.rows) == 2 * 4 * len(DEFAULT_EDITS)
    assert (out / "interventions.png").read_bytes()[:8] == PNG

    markdown = (out / "report.md").read_text()
    section = markdown.split("## Causal interventions")[1].split("## Images")[0]
    for line in written.table().splitlines():  # the per-class table, every row
        assert line in section
    # The planted sinks are prefix tokens, the same in every image: the donor's value changes nothing, and the cosine
    # of no change is undefined, so there is no donor row.
    assert not [row for row in written.rows if row["edit"] == "donor_sink_value" and row["donor_cosine"] is not None]
    assert "Donor cosine of the donor's sink value" not in section
    assert "`0:0` (NOP 4), `0:2` (broadcast 4), chosen by `select_heads`" in section
    assert "![Causal interventions](interventions.png)" in section and "How to read it" in section
    assert "Checks, once per edited head (`0:0`, `0:2`)" in section and "Skipped" in section

    printed = stdout.split("causal interventions: final patch change")[1].splitlines()[1:]
    assert printed[0].split() == ["edit", "NOP", "broadcast"]
    cells = {(e["edit"], e["class"]): e for e in written.by_class()}
    for edit, line in zip(DEFAULT_EDITS, printed[1:], strict=False):
        nop, broadcast = cells[edit, "nop"], cells[edit, "broadcast"]
        assert line.split() == [edit, f"{nop['mean']:.3g}", "(1/4)", f"{broadcast['mean']:.3g}", "(1/4)"]
    assert stdout.index("sink events per image, by layer:") < stdout.index("causal interventions")


def test_heads_and_edits_given(models):
    result = inspect_model(
        str(models / "planted"),
        images=models / "images",
        progress=False,
        interventions=True,
        edits="zero_sink_value,gate_closed",
        heads="0:2",
    )
    causal = result.interventions
    assert result.folder is None and [(h["layer"], h["head"]) for h in causal.heads] == [(0, 2)]
    assert {row["edit"] for row in causal.rows} == {"zero_sink_value"} and len(causal.rows) == 4
    assert causal.skipped["edits_not_applicable"] == ["gate_closed on 0:2: the model has no attention gate"]
    assert result.report.summary["inputs"]["interventions"]["heads_from"] == "given"
    with pytest.raises(InputError, match="apply with interventions=True"):
        inspect_model(str(models / "planted"), images=models / "images", heads="0:0")


def test_a_model_without_sinks_gets_one_line(models, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(models / "random"), "--images", str(models / "images"), "--out", str(out), "--interventions"]) == 0
    stdout = capsys.readouterr().out
    line = "none: no head has a sink event on these images, so there is nothing to edit."
    assert f"causal interventions: {line}" in stdout
    markdown = (out / "report.md").read_text()
    assert f"**Causal interventions**: {line}" in markdown and "## Causal interventions" not in markdown
    assert (
        not (out / "interventions.png").exists()
        and InterventionReport.from_json(out / "interventions.json").heads == []
    )


@pytest.mark.parametrize(
    "option, message",
    [
        (["--heads", "9:9"], "heads: 9:9 is outside the model's 2 layers x 4 heads"),
        (["--heads", "1-2"], "heads: got '1-2'; allowed: layer:head pairs"),
        (["--edits", "zero_sink_value,frobnicate"], "edits: got zero_sink_value, frobnicate; allowed: "),
    ],
)
def test_bad_heads_or_edits_are_one_line(models, option, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [str(models / "planted"), "--images", str(models / "images"), "--out", str(out), "--interventions", *option]
        )
        == 2
    )
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("sink-models inspect: ") and message in captured.err
    assert list(tmp_path.iterdir()) == []

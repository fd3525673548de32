"""`sink-models inspect`: the report folder against `diagnose` run by hand, SinkViT folders without their code, the
built-in images, datasets, and the one-line errors."""

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import STOCK_SIZES, Marker, assert_nested_close, tiny_config
from families import CASES as FAMILY_CASES
from families import build as build_family
from PIL import Image
from planted import plant
from transformers import (
    BertConfig,
    BertModel,
    BitImageProcessorPil,
    ConvNextConfig,
    ConvNextImageProcessorPil,
    ConvNextModel,
    Dinov2Config,
    Dinov2Model,
    Siglip2Config,
    Siglip2ImageProcessorPil,
    Siglip2Model,
)

from sink_models import SinkViTForImageClassification
from sink_models.checkpoint import save_checkpoint
from sink_models.diagnostics import SinkReport, diagnose
from sink_models.errors import InputError
from sink_models.inspection import (
    DESCRIPTION,
    ImageSet,
    builtin_images,
    cli,
    inspect_model,
    load_model,
    main,
    render_markdown,
)
from sink_models.inspection.images import _batches
from sink_models.inspection.report import MARKER

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(20, 24), (16, 16), (30, 18), (17, 40)]  # (height, width) of the test's image files


def _png(path: Path, seed: int, size=(20, 24), mode="RGB") -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


@pytest.fixture(scope="module")
def dino(tmp_path_factory) -> Path:
    """A tiny DINOv2 with a planted NOP head (0) and broadcast head (2) on CLS in layer 0, and a DINOv2-style
    processor (shortest edge, then centre crop)."""
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(**STOCK_SIZES, intermediate_size=64)).eval()
    x = torch.randn(2, 3, 16, 16)
    plant(model, x, head=0, target=0, kind="nop")
    plant(model, x, head=2, target=0, kind="broadcast")
    folder = tmp_path_factory.mktemp("models") / "tiny-dinov2"
    model.save_pretrained(folder)
    processor = BitImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Four PNGs of different sizes (one grayscale) and one file that is not an image."""
    folder = tmp_path_factory.mktemp("images")
    for i, size in enumerate(SIZES):
        _png(folder / f"img{i}.png", i, size, mode="L" if i == 2 else "RGB")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def by_hand(folder: Path, images: list[Image.Image], batch_size: int) -> SinkReport:
    """The report of `diagnose` on the model's own processor outputs, batch by batch, without the command."""
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    rgb = [image.convert("RGB") for image in images]
    batches = [
        dict(processor(images=rgb[i : i + batch_size], return_tensors="pt")) for i in range(0, len(rgb), batch_size)
    ]
    return diagnose(model, batches)


def assert_same_report(written: SinkReport, expected: SinkReport) -> None:
    for name in ("heads", "layers", "events", "thresholds", "attention"):
        assert_nested_close(getattr(written, name), getattr(expected, name), rel=1e-6, abs=1e-9, where=name)
    summary = {key: value for key, value in written.summary.items() if key != "inputs"}
    assert_nested_close(summary, expected.summary, rel=1e-6, abs=1e-9, where="summary")


def markdown_row(cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def test_report_folder_equals_diagnose_by_hand(dino, image_folder, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(dino), "--images", str(image_folder), "--out", str(out), "--batch-size", "4"]) == 0
    stdout = capsys.readouterr().out
    written = SinkReport.from_json(out / "report.json")
    names = [f"img{i}.png" for i in range(len(SIZES))]
    expected = by_hand(dino, [Image.open(image_folder / name) for name in names], batch_size=4)
    assert_same_report(written, expected)
    inputs = written.summary["inputs"]
    assert inputs["images"] == names and inputs["skipped"] == ["corrupt.png"] and inputs["revision"] is None
    n, layers, heads = len(names), written.model["layers"], written.model["heads"]
    assert written.summary["images"] == n and (layers, heads) == (2, 4)

    # The planted heads: every image has one NOP and one broadcast event on CLS, in layer 0.
    rows = {(h["layer"], h["head"]): h for h in written.heads}
    assert rows[0, 0]["events"] == rows[0, 0]["nop"] == rows[0, 0]["cls"] == n
    assert rows[0, 2]["events"] == rows[0, 2]["broadcast"] == rows[0, 2]["cls"] == n

    with open(out / "heads.csv") as file:
        table = list(csv.DictReader(file))
    assert len(table) == layers * heads
    assert [(int(r["layer"]), int(r["head"]), int(r["events"])) for r in table] == [
        (h["layer"], h["head"], h["events"]) for h in expected.heads
    ]

    markdown = (out / "report.md").read_text()
    for row in expected.layers:
        per_image = [
            f"{row[key] / n:.2f}" for key in ("events", "nop", "broadcast", "other", "cls", "register", "patch")
        ]
        norms = [f"{row['token_norm_max']:.2f}", f"{row['token_norm_max_over_median']:.2f}"]
        assert markdown_row([row["layer"], *per_image, *norms]) in markdown
        assert [row["layer"], *per_image, *norms] == _stdout_layer(stdout, row["layer"])
    for head, kind, counts in ((0, "NOP", [n, 0, 0]), (2, "broadcast", [0, n, 0])):
        row = rows[0, head]
        medians = [f"{row[key]:.3f}" for key in ("ratio_out", "stable_rank", "max_inflow")]
        assert markdown_row([0, head, n, kind, *counts, "CLS", *medians]) in markdown
    assert markdown.index("| 0 | 0 | 4 | NOP") < markdown.index("| 0 | 2 | 4 | broadcast")  # ties: layer, head order
    assert "`corrupt.png`" in markdown.split("## Images")[1] and "Skipped (1" in markdown
    assert f"# Attention sinks of `{dino}`" in markdown

    figures = sorted(p.name for p in out.glob("*.png"))
    assert {"events_by_head.png", "sink_types_by_layer.png", "diagnostic_plane.png"} <= set(figures)
    for name in figures:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in markdown
    written_files = sorted([*figures, "heads.csv", "report.json", "report.md"])
    assert sorted(p.name for p in out.iterdir()) == sorted([*written_files, MARKER])
    assert json.loads((out / MARKER).read_text()) == {"written_by": "sink-models inspect", "files": written_files}
    assert f"sink events per image: {2.0:.2f} (NOP 1.00, broadcast 1.00, other 0.00)" in stdout
    assert "skipped 1 unreadable: corrupt.png" in stdout and "sink share: CLS 100.0%" in stdout


def _stdout_layer(stdout: str, layer: int) -> list:
    """The cells of `layer`'s row in the printed per-layer table."""
    lines = stdout.split("sink events per image, by layer:\n")[1].splitlines()
    assert lines[0].split()[:3] == ["layer", "sinks", "NOP"]
    cells = lines[1 + layer].split()
    return [int(cells[0]), *cells[1:]]


def test_markdown_reads_the_thresholds(dino, image_folder):
    result = inspect_model(str(dino), images=image_folder, max_images=1, progress=False)
    assert result.folder is None and result.images == ["img0.png"] and result.skipped == ["corrupt.png"]
    result.report.thresholds.update(nop_ratio=0.123, broadcast_ratio=0.456, broadcast_rank=1.789, event=0.75)
    text = render_markdown(result.report, [])
    assert "ratio_out <= 0.123" in text and "ratio_out >= 0.456 and stable rank <= 1.789" in text
    assert "at least 75% of its queries" in text and "ratio_out <= 0.2" not in text


def test_images_the_processor_cannot_take_are_skipped():
    def processor(images, return_tensors):
        if any(image.size == (3, 3) for image in images):
            raise ValueError("too small")
        return {"pixel_values": torch.stack([torch.full((1,), float(image.size[0])) for image in images])}

    sizes = [5, 3, 6, 7, 3]
    found = ImageSet("test", [f"i{k}" for k in range(5)], [Image.new("RGB", (w, w)) for w in sizes])
    batches = list(_batches(processor, found, batch_size=2, progress=False))
    assert [batch["pixel_values"].flatten().tolist() for batch in batches] == [[5.0], [6.0, 7.0]]
    assert found.skipped == ["i1", "i4"] and found.used == ["i0", "i2", "i3"]


def test_sinkvit_folder_loads_with_the_installed_classes(tmp_path):
    torch.manual_seed(0)
    model = SinkViTForImageClassification(tiny_config("gated-reg")).eval()
    folder = save_checkpoint(model, tmp_path / "sink-vit")
    code = sorted(folder.glob("*.py"))
    assert code  # the remote-code files: importing either would now fail
    for path in code:
        path.write_text("raise RuntimeError('the checkpoint folder's own code ran')\n")
    pictures = [
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)) for i in range(3)
    ]
    result = inspect_model(str(folder), images=pictures, batch_size=2, progress=False)
    assert result.report.model["class"] == "SinkViTModel" and result.report.model["num_prefix_tokens"] == 5
    assert result.images == ["image 0", "image 1", "image 2"] and result.skipped == []

    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    batches = [dict(processor(images=pictures[i : i + 2], return_tensors="pt")) for i in (0, 2)]
    expected = diagnose(model, batches)  # the in-memory original: the folder's weights were loaded, not random ones
    assert_same_report(result.report, expected)


def test_dual_siglip2_gets_the_whole_processor_output(image_folder, tmp_path, monkeypatch):
    """A dual encoder as AutoModel gives it; SigLIP2's padding mask and patch grid reach diagnose with its pixels."""
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    vision = {**small, "patch_size": 4, "num_patches": 16}
    model = Siglip2Model(Siglip2Config(vision_config=vision, text_config={**small, "vocab_size": 99})).eval()
    model.save_pretrained(tmp_path / "siglip2")
    Siglip2ImageProcessorPil(patch_size=4, max_num_patches=16).save_pretrained(tmp_path / "siglip2")
    seen = []

    def spy(model, batches, **kwargs):
        batches = list(batches)
        seen.extend(batches)
        return diagnose(model, batches, **kwargs)

    monkeypatch.setattr("sink_models.inspection.command.diagnose", spy)
    result = inspect_model(str(tmp_path / "siglip2"), images=image_folder, batch_size=4, progress=False)
    assert result.report.model["class"] == "Siglip2Model" and result.report.model["num_prefix_tokens"] == 0
    assert [sorted(batch) for batch in seen] == [["pixel_attention_mask", "pixel_values", "spatial_shapes"]]
    assert not seen[0]["pixel_attention_mask"].all()  # images of other aspect ratios than 1: padded patches
    pictures = [Image.open(image_folder / f"img{i}.png") for i in range(len(SIZES))]
    assert_same_report(result.report, by_hand(tmp_path / "siglip2", pictures, batch_size=4))


def test_builtin_images_are_said_and_deterministic(dino, tmp_path, capsys):
    out = tmp_path / "builtin"
    assert main([str(dino), "--max-images", "3", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    samples = builtin_images()
    assert len(samples) == 8 and len({name for name, _ in samples}) == 8
    again = builtin_images()
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(samples, again, strict=True))
    assert all(image.mode == "RGB" and min(image.size) >= 100 for _, image in samples)
    assert len({np.asarray(image.resize((8, 8))).tobytes() for _, image in samples}) == 8  # eight different views
    said = f"3 of the {DESCRIPTION}"
    assert f"images: {said}" in stdout
    written = SinkReport.from_json(out / "report.json")
    assert written.summary["inputs"]["images"] == [name for name, _ in samples[:3]]
    assert said in (out / "report.md").read_text()
    assert_same_report(written, by_hand(dino, [image for _, image in samples[:3]], batch_size=8))


def test_dataset_imagefolder(dino, tmp_path):
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    for i in range(3):
        _png(data / f"row{i}.png", 10 + i)
    result = inspect_model(str(dino), dataset=str(tmp_path / "data"), split="train", max_images=2, progress=False)
    assert result.images == ["row0.png", "row1.png"] and result.skipped == []
    assert "'train' split of the dataset" in result.images_from
    expected = by_hand(dino, [Image.open(data / name) for name in result.images], batch_size=8)
    assert_same_report(result.report, expected)
    with pytest.raises(InputError, match="no split|could not be loaded"):
        inspect_model(str(dino), dataset=str(tmp_path / "data"), split="validation", progress=False)


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, dino) -> Path:
    root = tmp_path_factory.mktemp("bad")
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    BertModel(BertConfig(**small, vocab_size=100)).save_pretrained(root / "bert")
    convnext = ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=16))
    convnext.save_pretrained(root / "convnext")
    ConvNextImageProcessorPil(size={"shortest_edge": 16}).save_pretrained(root / "convnext")
    (root / "remote").mkdir()
    config = {"model_type": "my_vit", "auto_map": {"AutoConfig": "a.B", "AutoModel": "a.C"}, "image_size": 16}
    (root / "remote" / "config.json").write_text(json.dumps(config))
    (root / "empty").mkdir()
    (root / "unreadable").mkdir()
    (root / "unreadable" / "notes.txt").write_text("not an image")
    (root / "unreadable" / "half.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    hostile_checkpoints(root, dino)
    return root


def hostile_checkpoints(root: Path, dino: Path) -> None:
    """Copies of the tiny DINOv2 that lie: weights of another model, extra weights, pickled weights only, and
    config.json structures that fail deep in the build (or take minutes to build)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(dino / "model.safetensors")
    for name in ("decoy", "extra", "pickled", "truncated", "pickled shard", *MALFORMED):
        shutil.copytree(dino, root / name)
    # A safetensors file of filler beside a shard index that names a pickle: transformers would torch.load it.
    (root / "pickled shard" / "model.safetensors").rename(root / "pickled shard" / "filler.safetensors")
    with open(root / "pickled shard" / "pytorch_model-00001.bin", "wb") as file:
        pickle.dump(Marker(root / "unpickled.txt"), file)
    index = {"metadata": {}, "weight_map": dict.fromkeys(weights, "pytorch_model-00001.bin")}
    (root / "pickled shard" / "model.safetensors.index.json").write_text(json.dumps(index))
    whole = (dino / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    decoy = {f"backbone.weight{i}": torch.zeros(4) for i in range(len(weights))}  # as many tensors, none the model's
    save_file(decoy, root / "decoy" / "model.safetensors", metadata={"format": "pt"})
    extra = weights | {"encoder.layer.0.attention.backdoor": torch.ones(3)}
    save_file(extra, root / "extra" / "model.safetensors", metadata={"format": "pt"})
    (root / "pickled" / "model.safetensors").unlink()
    with open(root / "pickled" / "pytorch_model.bin", "wb") as file:
        pickle.dump(Marker(root / "unpickled.txt"), file)
    for name, change in MALFORMED.items():
        config = json.loads((root / name / "config.json").read_text())
        (root / name / "config.json").write_text(change(config))


MALFORMED = {
    "patch 0": lambda c: json.dumps(c | {"patch_size": 0}),
    "heads 0": lambda c: json.dumps(c | {"num_attention_heads": 0}),
    "layers 2.5": lambda c: json.dumps(c | {"num_hidden_layers": 2.5}),
    "100k layers": lambda c: json.dumps(c | {"num_hidden_layers": 100_000}),
    "deep json": lambda c: json.dumps(c)[:-1] + ', "nested": ' + "[" * 200_000 + "]" * 200_000 + "}",
}


BAD = {
    "missing folder": (["{root}/nowhere"], "is not a folder"),
    "missing Hub id": (["no-org/no-such-model"], "could not be loaded"),
    "text model": (["{root}/bert"], "bert model without a vision encoder"),
    "unsupported": (["{root}/convnext"], "ConvNextModel"),
    "remote code": (["{root}/remote"], "pass --trust-remote-code"),
    "empty folder": (["{dino}", "--images", "{root}/empty"], "has no files"),
    "unreadable": (["{dino}", "--images", "{root}/unreadable"], "none of the 2 files"),
    "no image folder": (["{dino}", "--images", "{root}/nowhere"], "is not a folder"),
    "decoy weights": (["{root}/decoy"], "the weights file lacks {weights} of the model's weights"),
    "extra weights": (["{root}/extra"], "holds 1 weights the model does not have (encoder.layer.0.attention.backdoor)"),
    "truncated weights": (["{root}/truncated"], "has model.safetensors, which is not a readable safetensors file"),
    "pickled shard": (["{root}/pickled shard"], "has a shard index naming 'pytorch_model-00001.bin', not one of"),
    "pickle only": (["{root}/pickled"], "has only pytorch_model.bin (a pickle, never loaded here)"),
    "patch 0": (["{root}/patch 0"], "config.json patch_size 0; allowed: a positive integer"),
    "heads 0": (["{root}/heads 0"], "config.json num_attention_heads 0; allowed: a positive integer"),
    "layers 2.5": (["{root}/layers 2.5"], "config.json num_hidden_layers 2.5; allowed: a positive integer"),
    "100k layers": (["{root}/100k layers"], "num_hidden_layers 100000, but its safetensors files hold only"),
    "deep json": (["{root}/deep json"], "could not be loaded: RecursionError"),
    "a file": (["{root}/unreadable/notes.txt"], "is a file; allowed: a model folder or a Hub id (org/name)"),
    "not a Hub id": (["bad..name"], "is neither a folder nor a valid Hub id"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(case, bad_models, dino, tmp_path, capsys):
    argv, message = BAD[case]
    argv = [arg.format(root=bad_models, dino=dino) for arg in argv]
    message = message.format(weights=len(safetensors.torch.load_file(dino / "model.safetensors")))
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("sink-models inspect: ") and message in captured.err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary folder
    assert not (bad_models / "unpickled.txt").exists()


def test_a_mistyped_local_folder_fails_at_once_with_the_close_names(dino, capsys, monkeypatch):
    monkeypatch.chdir(dino.parent.parent)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # were it taken for a Hub id, it would wait on the Hub's retries
    typo = f"{dino.parent.name}/tiny-dinov"
    assert main([typo]) == 2
    assert capsys.readouterr().err == (
        f"sink-models inspect: model: {typo!r} is not a folder (in {dino.parent.name!r}: did you mean "
        "'tiny-dinov2'?); allowed: a model folder or a Hub id (org/name).\n"
    )


def test_the_repos_attention_implementation_is_never_used(dino, tmp_path):
    """A config.json naming a Hub kernel would have transformers fetch and run it: the command chooses its own."""
    folder = tmp_path / "kernel"
    shutil.copytree(dino, folder)
    config = json.loads((folder / "config.json").read_text())
    evil = {"attn_implementation": "evilorg/evil-kernel", "_attn_implementation": "evilorg/evil-kernel"}
    (folder / "config.json").write_text(json.dumps(config | evil))
    model, _, _ = load_model(str(folder))
    assert model.config._attn_implementation == "sdpa"
    assert load_model(str(folder), attn_implementation="eager")[0].config._attn_implementation == "eager"
    result = inspect_model(str(folder), max_images=2, progress=False)
    expected = inspect_model(str(dino), max_images=2, progress=False)
    for name in ("heads", "layers", "events"):
        assert_nested_close(getattr(result.report, name), getattr(expected.report, name), rel=1e-6, where=name)


def test_out_folder_replaced_only_when_it_is_a_report(dino, image_folder, tmp_path, capsys):
    out = tmp_path / "report"
    for count in ("2", "1"):  # an earlier report is replaced
        assert main([str(dino), "--images", str(image_folder), "--max-images", count, "--out", str(out)]) == 0
    assert SinkReport.from_json(out / "report.json").summary["images"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging folder left beside it
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    capsys.readouterr()
    assert main([str(dino), "--max-images", "1", "--out", str(other)]) == 2
    assert "is not a report folder of sink-models inspect" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]
    # A report.json alone does not make a folder ours: it once had the thesis and its data deleted.
    (other / "report.json").write_text("{}")
    (other / "data").mkdir()
    assert main([str(dino), "--max-images", "1", "--out", str(other)]) == 2
    assert "is not a report folder of sink-models inspect" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["data", "report.json", "thesis.tex"]
    # Nor does our marker make the user's files ours: a report folder the user added to is refused as well.
    (out / "thesis.tex").write_text("precious")
    assert main([str(dino), "--max-images", "2", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"sink-models inspect: out: {str(out)!r} holds files this tool did not write (thesis.tex); they would be "
        "deleted: choose a new folder or move them out.\n"
    )
    assert (out / "thesis.tex").read_text() == "precious"
    assert SinkReport.from_json(out / "report.json").summary["images"] == 1


@pytest.mark.parametrize("out", [".", "..", "{cwd}"])
def test_the_working_folder_is_never_an_out_folder(out, dino, tmp_path, capsys, monkeypatch):
    here = tmp_path / "work"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    out = out.format(cwd=here)
    assert main([str(dino), "--max-images", "1", "--out", out]) == 2
    assert capsys.readouterr().err == (
        f"sink-models inspect: out: {out!r} is the working folder or holds it; allowed: a new folder, e.g. 'report'.\n"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt", "work"]  # no stray '..old.*' folder


def test_console_entry_point(dino, image_folder, tmp_path):
    """`python -m sink_models inspect` in a fresh process (the console script `sink-models` calls the same `cli`)."""
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "sink_models", "inspect", str(dino), "--images", str(image_folder)]
    done = subprocess.run(
        [*command, "--max-images", "2", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    written = SinkReport.from_json(out / "report.json")
    assert written.summary["inputs"]["images"] == ["img0.png", "img1.png"]
    assert "diagnose: 100%" in done.stderr and "2/2" in done.stderr  # the progress bar, on stderr
    assert "sink events per image: 2.00 (NOP 1.00, broadcast 1.00" in done.stdout
    assert f"report: {out / 'report.md'}" in done.stdout


def test_cli_dispatch(capsys):
    assert cli([]) == 0 and "sink-models inspect MODEL" in capsys.readouterr().out
    assert cli(["frobnicate"]) == 2
    with pytest.raises(SystemExit) as exit_:
        cli(["inspect", "--help"])
    assert exit_.value.code == 0 and "--trust-remote-code" in capsys.readouterr().out
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the tests above never looked for a Hub


@pytest.mark.parametrize("family", [name for name in FAMILY_CASES if name not in ("dinov2", "vit")])
def test_every_family_is_inspected_from_its_folder(family, tmp_path):
    """Each family's tiny random model, saved with a processor, inspected on the built-in images: the report equals
    diagnose on the processor's output, and the folder holds report.md and the figures it links."""
    model = build_family(family)
    if FAMILY_CASES[family].padded:
        processor = Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16)
    else:
        processor = BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    folder = tmp_path / family
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    result = inspect_model(str(folder), max_images=3, out=tmp_path / "report", progress=False)
    pictures = [image for _, image in builtin_images()[:3]]
    expected = diagnose(model, [dict(processor(pictures, return_tensors="pt"))])
    for name in ("heads", "layers", "events"):
        assert_nested_close(getattr(result.report, name), getattr(expected, name), rel=1e-5, abs=1e-7, where=name)
    assert result.report.model["family"] == expected.model["family"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    figures = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert len(figures) == 4 and all(f"]({name})" in markdown for name in figures)
    assert all(f"| {layer} |" in markdown for layer in range(2))


def test_a_model_whose_activations_overflow_gets_its_report(dino, tmp_path, capsys):
    """NaN attention maps and figures are written as null and named; the report folder is complete."""
    folder = shutil.copytree(dino, tmp_path / "overflow")
    weights = safetensors.torch.load_file(folder / "model.safetensors")
    weights["embeddings.cls_token"] = torch.full_like(weights["embeddings.cls_token"], float("inf"))
    safetensors.torch.save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert main([str(folder), "--max-images", "2", "--out", str(tmp_path / "report")]) == 0
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert all(head["max_inflow"] is None for head in written["heads"])
    undefined = written["summary"]["non_finite"]
    assert {f"heads[{i}].max_inflow" for i in range(len(written["heads"]))} <= set(undefined)
    assert undefined[-1].startswith("attention (") and undefined[-1].endswith(" values)")
    assert (tmp_path / "report" / "report.md").is_file()


def test_a_hub_id_whose_org_is_also_a_folder_here_is_still_a_hub_id(dino, tmp_path, monkeypatch, capsys):
    """`sink-models/vit-x` beside a clone named sink-models: found in the Hub cache, it is not taken for a typo."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    cache = Path(os.environ["HF_HOME"]) / "hub" / "models--sink-models--tiny-dinov2"
    shutil.copytree(dino, cache / "snapshots" / sha)
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(sha)
    (tmp_path / "sink-models").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["sink-models/tiny-dinov2", "--max-images", "1"]) == 0, capsys.readouterr().err
    assert main(["sink-models/tiny-dinov3", "--max-images", "1"]) == 2  # not in the cache, offline: a folder typo
    assert "'sink-models/tiny-dinov3' is not a folder" in capsys.readouterr().err


def test_a_beit_pretraining_checkpoint_loads_as_its_backbone(tmp_path):
    """BeitForMaskedImageModeling keeps a head LayerNorm at `layernorm.*`, an nn.Identity in BeitModel: a head's
    weights the backbone does not use, not a disagreement between config and weights."""
    from transformers import BeitConfig, BeitForMaskedImageModeling, BeitModel

    from sink_models.loading import check_loaded_weights

    config = BeitConfig(**STOCK_SIZES, intermediate_size=64, use_mean_pooling=True)
    BeitForMaskedImageModeling(config).save_pretrained(tmp_path / "beit")
    model, info = BeitModel.from_pretrained(tmp_path / "beit", output_loading_info=True)
    assert {"layernorm.weight", "layernorm.bias"} <= set(info["unexpected_keys"])
    check_loaded_weights(model, info)  # does not raise

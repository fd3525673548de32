import hashlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import Marker, assert_nested_close, free_port, images, tiny_config
from families import build
from huggingface_hub import ModelCard
from PIL import Image
from planted import plant
from transformers import (
    BitImageProcessorPil,
    CLIPImageProcessorPil,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    Siglip2ImageProcessorPil,
)

from sink_models import SinkViTForImageClassification
from sink_models.checkpoint import save_checkpoint
from sink_models.data import _decode, digits
from sink_models.diagnostics import diagnose
from sink_models.evaluation.cards import ZOO_VERSION, merge_sections
from sink_models.training import DataArguments, ModelArguments, TrainArguments

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("eval_run", ROOT / "eval" / "run.py")
eval_run = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(eval_run)
# float32 forwards of other batch shapes or thread counts: ~100 float32 epsilons of relative rounding, no more.
FLOAT32_REL = 100 * torch.finfo(torch.float32).eps
LABELS = {i: str(3 * i % 10) for i in range(10)}  # class i is digit 3i mod 10: accuracy must map labels by name


def training_args(variant="plain", dataset="digits") -> dict:
    return {
        "model": asdict(ModelArguments(variant=variant)),
        "data": asdict(DataArguments(dataset=dataset)),
        "train": asdict(TrainArguments()),
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny SinkViT for the 10 digits with a planted NOP sink (head 0) and broadcast sink (head 1) on CLS."""
    torch.manual_seed(0)
    config = tiny_config("plain", num_labels=10, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = SinkViTForImageClassification(config).eval()
    x = images(config, batch=2)
    plant(model, x, head=0, target=0, kind="nop")
    plant(model, x, head=1, target=0, kind="broadcast")
    folder = tmp_path_factory.mktemp("ckpt") / "vit-planted"
    save_checkpoint(model, folder)
    (folder / "training_args.json").write_text(json.dumps(training_args()))
    return folder


def run(argv, capsys) -> tuple[int, str]:
    code = eval_run.cli([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def outputs(tmp_path) -> list[str]:
    return ["--results_dir", tmp_path / "results", "--cards_dir", tmp_path / "cards"]


def test_top_k_metric_module_loads_by_path_and_counts():
    import evaluate

    metric = evaluate.load(str(ROOT / "eval" / "metrics" / "top_k_accuracy"))
    ranked = [[3, 1, 0], [0, 2, 1], [2, 0, 1], [1, 2, 0]]
    labels = [3, 1, 1, 2]
    assert metric.compute(predictions=ranked, references=labels, k=[1, 2, 3]) == {
        "top1": 1 / 4,
        "top2": 2 / 4,
        "top3": 4 / 4,
    }
    with pytest.raises(ValueError, match="k: got \\[1, 5\\]; allowed: values up to 3"):
        metric.compute(predictions=ranked, references=labels, k=[1, 5])


def test_end_to_end_results_and_card(checkpoint, tmp_path, capsys):
    code, out = run(["--model", checkpoint, "--trust_remote_code", "--max_images", 24, *outputs(tmp_path)], capsys)
    assert code == 0, out
    result = json.loads((tmp_path / "results" / "vit-planted.json").read_text())

    # Accuracy against an independent pass: the model on the first 24 held-out digits.
    model = SinkViTForImageClassification.from_pretrained(checkpoint).eval()
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(checkpoint)
    test = digits().eval.select(range(24))
    pictures = [Image.open(__import__("io").BytesIO(row["image"]["bytes"])).convert("RGB") for row in test]
    with torch.no_grad():
        logits = model(**processor(pictures, return_tensors="pt")).logits
    digit_of_class = torch.tensor([int(LABELS[i]) for i in range(10)])
    ranked = digit_of_class[logits.topk(5, dim=-1).indices]  # the digits the model ranks first
    labels = torch.tensor(test["label"])  # digits' label i is the digit i
    assert result["accuracy"]["top1"] == pytest.approx(float((ranked[:, 0] == labels).float().mean()))
    assert result["accuracy"]["top5"] == pytest.approx(float((ranked == labels[:, None]).any(-1).float().mean()))
    assert result["dataset"] == {"name": "digits", "options": {}, "split": "test", "images": 24, "unreadable_images": 0}
    # One image's forward, counted by hand: patch embedding, per layer q/k/v/o, QK^T and AV, the MLP; the head.
    config = model.config
    patches, d, width = 16, config.hidden_size, config.intermediate_size
    tokens = patches + 1
    layer = 2 * tokens * d * 4 * d + 4 * tokens * tokens * d + 2 * 2 * tokens * d * width
    flops = 2 * patches * 3 * 4 * 4 * d + config.num_hidden_layers * layer + 2 * d * 10
    assert result["cost"]["gflops"] == pytest.approx(flops / 1e9, rel=1e-9) and result["cost"]["images_per_s"] > 0

    # The planted sinks: one NOP and one broadcast event on CLS per image, in layer 0.
    sinks = result["sinks"]
    assert sinks["nop_per_image"] == 1.0 and sinks["broadcast_per_image"] == 1.0
    assert sinks["sink_share"] == {"cls": 1.0, "register": 0.0, "patch": 0.0}
    assert {k: result["versions"][k] for k in ("torch", "transformers")} == {
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }

    # The card: model-index values equal the JSON's; figures beside it; the usage snippet pins the tag.
    folder = tmp_path / "cards" / "vit-planted"
    card = ModelCard.load(folder / "README.md")
    values = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert values[("accuracy", "top1")] == result["accuracy"]["top1"]
    assert values[("accuracy", "top5")] == result["accuracy"]["top5"]
    assert values[("nop_per_image", None)] == sinks["nop_per_image"]
    assert values[("broadcast_per_image", None)] == sinks["broadcast_per_image"]
    assert values[("cls_sink_share", None)] == 1.0 and values[("patch_sink_share", None)] == 0.0
    assert f'from_pretrained("{checkpoint}", trust_remote_code=True)' in card.text  # a local folder: itself
    assert {"events_by_head.png", "diagnostic_plane.png", "attention_layer0.png"} <= {p.name for p in folder.iterdir()}
    assert "| vit-planted |" in out  # the printed comparison table


def test_second_run_keeps_what_a_person_wrote(checkpoint, tmp_path, capsys):
    argv = ["--model", checkpoint, "--trust_remote_code", *outputs(tmp_path)]
    assert run([*argv, "--max_images", 8], capsys)[0] == 0
    path = tmp_path / "cards" / "vit-planted" / "README.md"
    card = ModelCard.load(path)
    card.data.base_model = "someone/else"  # metadata a person added
    text = str(card).replace(
        "<!-- sink-models:begin usage -->", "## Notes\n\nHand-written.\n\n<!-- sink-models:begin usage -->"
    )
    path.write_text(text + "\nA closing remark.\n")
    assert run([*argv, "--max_images", 16], capsys)[0] == 0
    again = ModelCard.load(path)
    assert "## Notes\n\nHand-written." in again.text and again.text.rstrip().endswith("A closing remark.")
    assert again.data.base_model == "someone/else"
    result = json.loads((tmp_path / "results" / "vit-planted.json").read_text())
    assert result["dataset"]["images"] == 16
    assert "| `digits` (test) | 16 |" in again.text and again.text.count("<!-- sink-models:begin usage -->") == 1


def section(name: str, text: str) -> str:
    return f"<!-- sink-models:begin {name} -->{text}<!-- sink-models:end {name} -->"


def test_merge_sections_replaces_generated_text_only():
    old = f"intro\n{section('a', 'old a')}\nmiddle\n{section('b', 'x')}\n"
    merged = merge_sections(old, f"{section('a', 'new a')}\n{section('b', 'new b')}")
    assert merged == f"intro\n{section('a', 'new a')}\nmiddle\n{section('b', 'new b')}\n"
    merged = merge_sections(old, f"{section('a', 'new a')}\n{section('c', 'c')}\n{section('d', 'd')}")
    # b: not generated now, kept; c and d: new, in new's order right after a, the section before them in new
    added = f"{section('a', 'new a')}\n\n{section('c', 'c')}\n\n{section('d', 'd')}"
    assert merged == f"intro\n{added}\nmiddle\n{section('b', 'x')}\n"
    merged = merge_sections(old, f"{section('e', 'e')}\n{section('a', 'a')}")
    assert (
        merged == f"intro\n{section('a', 'a')}\nmiddle\n{section('b', 'x')}\n\n{section('e', 'e')}\n"
    )  # none before e


def test_stock_dinov2_with_registers_without_remote_code(tmp_path, capsys):
    config = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16,
        patch_size=4, num_register_tokens=2,
    )  # fmt: skip
    folder = tmp_path / "dinov2-reg"
    Dinov2WithRegistersModel(config).save_pretrained(folder)
    BitImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(folder)
    argv = ["--model", folder, "--dataset", "digits", "--max_images", 10, *outputs(tmp_path)]
    code, out = run(argv, capsys)
    assert code == 0, out
    result = json.loads((tmp_path / "results" / "dinov2-reg.json").read_text())
    assert result["accuracy"] is None and "no classification head" in result["accuracy_note"]
    assert result["model"]["class"] == "Dinov2WithRegistersModel" and result["dataset"]["images"] == 10
    assert len(result["heads"]) == 8 and len(result["layers"]) == 2
    card = ModelCard.load(tmp_path / "cards" / "dinov2-reg" / "README.md")
    assert "trust_remote_code" not in card.text and "no accuracy" in card.text
    assert {r.metric_type for r in card.data.eval_results} >= {"sinks_per_image", "register_sink_share"}


STOCK_FAMILIES = {
    # name: (model, processor): the processors without torchvision, at the tiny models' 32 x 32 / patch 8
    "dinov3": lambda: (build("dinov3"), BitImageProcessorPil(size={"shortest_edge": 32}, crop_size=32)),
    "clip-dual": lambda: (build("clip_dual"), CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32)),
    "siglip2": lambda: (build("siglip2"), Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16)),
}


@pytest.mark.parametrize("family", STOCK_FAMILIES)
def test_stock_families_without_a_head_get_the_diagnostics(family, tmp_path, capsys):
    model, processor = STOCK_FAMILIES[family]()
    folder = tmp_path / family
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    argv = ["--model", folder, "--dataset", "digits", "--max_images", 6, "--batch_size", 4, *outputs(tmp_path)]
    code, out = run(argv, capsys)
    assert code == 0, out
    result = json.loads((tmp_path / "results" / f"{family}.json").read_text())
    assert result["accuracy"] is None and "no classification head" in result["accuracy_note"]
    assert result["model"]["class"] == type(model).__name__ and result["dataset"]["images"] == 6
    assert len(result["heads"]) == 8 and result["cost"]["gflops"] > 0
    # The same report as diagnose on the same processed images, in the same batches.
    rows = digits().eval.select(range(6))
    pictures = [_decode(row["image"]).convert("RGB") for row in rows]
    batches = [dict(processor(pictures[i : i + 4], return_tensors="pt")) for i in (0, 4)]
    expected = diagnose(model, batches)
    assert result["sinks"]["sinks_per_image"] == expected.summary["sinks_per_image"]
    assert_nested_close(result["heads"], expected.heads, rel=1e-6, where="heads")
    assert (tmp_path / "cards" / family / "README.md").exists()


def test_two_processes_give_the_report_of_one(checkpoint, tmp_path, capsys):
    argv = ["--model", checkpoint, "--trust_remote_code", "--max_images", 21, "--batch_size", 4]
    assert run([*argv, *outputs(tmp_path / "one")], capsys)[0] == 0
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip",
        "127.0.0.1", "--main_process_port", str(free_port()), str(ROOT / "eval" / "run.py"),
        *map(str, argv), *map(str, outputs(tmp_path / "two")),
    ]  # fmt: skip
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "results" / "vit-planted.json").read_text()) for n in ("one", "two"))
    assert two["dataset"]["images"] == one["dataset"]["images"] == 21
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["accuracy"] == one["accuracy"]
    assert two["sinks"] == one["sinks"]
    # Each process runs other batch compositions (11 and 10 images in batches of 4 against 5 x 4 + 1), and float32
    # kernels round per batch shape and thread count: per-image figures agree to float32 rounding, not bit for bit
    # (seen: 1e-8 apart with transformers 5.25). A lost or doubled image moves a mean by ~1/21, far beyond this.
    for name in ("layers", "heads"):
        assert_nested_close(one[name], two[name], rel=FLOAT32_REL, abs=FLOAT32_REL, where=name)


HUB_SHA = "0123456789abcdef0123456789abcdef01234567"


def hub_cache_model(checkpoint: Path, repo: str) -> None:
    """Put a checkpoint into the (offline) Hub cache as `repo` at revision main, the way a download leaves it."""
    sha = HUB_SHA
    cache = Path(os.environ["HF_HOME"]) / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(checkpoint, cache / "snapshots" / sha, dirs_exist_ok=True)
    (cache / "refs").mkdir(parents=True, exist_ok=True)
    (cache / "refs" / "main").write_text(sha)


def test_a_hub_id_from_the_cache_loads_and_a_missing_revision_is_refused(checkpoint, tmp_path, capsys):
    hub_cache_model(checkpoint, "testorg/vit-planted")
    argv = ["--model", "testorg/vit-planted", "--trust_remote_code", "--max_images", 4, *outputs(tmp_path)]
    code, out = run(argv, capsys)
    assert code == 0, out
    result = json.loads((tmp_path / "results" / "testorg--vit-planted.json").read_text())
    assert result["model"]["source"] == "testorg/vit-planted" and result["training"] == training_args()
    assert result["model"]["commit"] == HUB_SHA
    code, out = run([*argv, "--revision", "v9"], capsys)
    assert code == 2 and "at revision 'v9'" in out and "could not be loaded" in out


def imagefolder(root: Path) -> Path:
    for split in ("train", "test"):
        for name, colour in {"a": (200, 10, 10), "b": (10, 10, 200)}.items():
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (16, 16), colour).save(root / split / name / "0.png")
    return root


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "model: '{tmp}/nowhere' is not a folder; allowed: a model folder or a Hub id"),
        ("pickled", "has only pytorch_model.bin (a pickle, never loaded here); allowed: weights in safetensors files"),
        ("decoy", "could not be loaded: the weights file lacks"),
        (
            "float layers",
            "model: '{tmp}/float layers' has config.json num_hidden_layers 2.5; allowed: a positive integer",
        ),
        ("hub", "model: 'noorg/nomodel' (no local folder of that name; as a Hub id) could not be loaded"),
        ("unsupported", "is a Data2VecVisionModel checkpoint (model_type 'data2vec-vision'); the diagnostics support"),
        ("columns", "label_column: '{tmp}/images' has no column 'kind'; its columns are ['image', 'label']"),
        ("remote", "runs its own code (config.json's auto_map or model_type); pass --trust-remote-code"),
        ("local-revision", "revision: 'v1' given for the local folder"),
        ("suite", "--suite: no suite 'nosuch'; allowed: ['interventions', 'seeds', 'synthetic', 'zoo']"),
    ],
)
def test_bad_input_one_line_nonzero_and_nothing_written(case, message, checkpoint, tmp_path, capsys):
    from transformers import Data2VecVisionConfig, Data2VecVisionModel

    argv = {
        "missing": ["--model", tmp_path / "nowhere"],
        "hub": ["--model", "noorg/nomodel"],
        "unsupported": ["--model", tmp_path / "d2v", "--dataset", "digits"],
        "columns": ["--model", checkpoint, "--trust_remote_code", "--dataset", imagefolder(tmp_path / "images")]
        + ["--label_column", "kind"],
        "remote": ["--model", checkpoint],
        "local-revision": ["--model", checkpoint, "--trust_remote_code", "--revision", "v1"],
        "suite": ["--suite", "nosuch"],
        "pickled": ["--model", tmp_path / "pickled", "--trust_remote_code"],
        "decoy": ["--model", tmp_path / "decoy", "--trust_remote_code"],
        "float layers": ["--model", tmp_path / "float layers", "--trust_remote_code"],
    }[case]
    if case == "float layers":
        folder = shutil.copytree(checkpoint, tmp_path / case)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 2.5}))
    if case in ("pickled", "decoy"):
        from safetensors.torch import load_file, save_file

        folder = shutil.copytree(checkpoint, tmp_path / case)
        weights = load_file(folder / "model.safetensors")
        (folder / "model.safetensors").unlink()
        if case == "pickled":
            (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Marker(tmp_path / "unpickled.txt")))
        else:  # as many tensors as the model's, none of them by name
            save_file({f"w{i}": torch.zeros(2) for i in range(len(weights))}, folder / "model.safetensors")
    if case == "unsupported":
        # Its attention bypasses the attention-function registry.
        d2v = Data2VecVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
        Data2VecVisionModel(d2v).save_pretrained(tmp_path / "d2v")
    code, out = run([*argv, *outputs(tmp_path)], capsys)
    assert code != 0
    # The model's stage line ("[1/1] ...: accuracy and sinks") may come first when the data, not the model, is bad.
    lines = [line for line in out.splitlines() if line.strip() and not re.match(r"\d+:\d\d \[1/1\] ", line)]
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0], out
    assert not (tmp_path / "results").exists() and not (tmp_path / "cards").exists()
    assert not (tmp_path / "unpickled.txt").exists()


def test_the_command_line_exits_non_zero_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "eval" / "run.py"), "--model", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: model: '{tmp_path}/nowhere' is not a folder; allowed: a model folder or a Hub id (org/name)."
    ]


def test_a_later_bad_model_leaves_no_file_of_an_earlier_one(checkpoint, tmp_path, capsys):
    argv = ["--model", checkpoint, tmp_path / "nowhere", "--trust_remote_code", "--max_images", 4]
    code, out = run([*argv, *outputs(tmp_path)], capsys)
    assert code == 2 and "nowhere' is not a folder" in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "cards").exists()


def test_the_model_equals_form_names_models_without_the_zoo_suite(checkpoint, tmp_path, capsys):
    code, out = run([f"--model={checkpoint}", "--trust_remote_code", "--max_images", 4, *outputs(tmp_path)], capsys)
    assert code == 0, out
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["vit-planted.json"]


def test_a_synthetic_task_model_is_not_an_image_classifier(tmp_path, capsys):
    code, out = run(["--model", ROOT / "zoo" / "nop-plain", *outputs(tmp_path)], capsys)
    assert code == 2 and "was trained on the synthetic nop task, not on images; analyse it with" in out


def test_a_training_run_folder_is_named_after_its_run(checkpoint, tmp_path, capsys):
    run_folder = tmp_path / "my-run" / "model"
    shutil.copytree(checkpoint, run_folder)
    code, out = run(["--model", run_folder, "--trust_remote_code", "--max_images", 4, *outputs(tmp_path)], capsys)
    assert code == 0, out
    card = ModelCard.load(tmp_path / "cards" / "my-run" / "README.md")
    assert f'from_pretrained("{run_folder}", trust_remote_code=True)' in card.text  # not a Hub repo: the folder


def test_unreadable_images_are_counted_and_left_out(tmp_path, capsys):
    folder = imagefolder(tmp_path / "images")
    Image.new("RGB", (16, 16), (10, 200, 10)).save(folder / "test" / "b" / "1.png")
    (folder / "test" / "a" / "broken.png").write_bytes(b"not an image")
    config = tiny_config("plain", num_labels=2, id2label={0: "b", 1: "a"}, label2id={"b": 0, "a": 1})
    save_checkpoint(SinkViTForImageClassification(config), tmp_path / "ab")
    argv = ["--model", tmp_path / "ab", "--trust_remote_code", "--dataset", folder, *outputs(tmp_path)]
    code, out = run(argv, capsys)
    assert code == 0, out
    result = json.loads((tmp_path / "results" / "ab.json").read_text())
    assert result["dataset"]["unreadable_images"] == 1
    assert result["dataset"]["images"] == result["accuracy"]["images"] == result["sinks"]["images"] == 3


def test_zoo_models_run_their_code_by_default_and_their_cards_pin_the_hub_tag(tmp_path, capsys):
    argv = ["--model", ROOT / "zoo" / "vit-gated-reg", "--max_images", 4, "--hub_org", "someorg", *outputs(tmp_path)]
    code, out = run(argv, capsys)
    assert code == 0, out
    card = ModelCard.load(tmp_path / "cards" / "vit-gated-reg" / "README.md")
    pinned = f'from_pretrained("someorg/vit-gated-reg", trust_remote_code=True, revision="{ZOO_VERSION}")'
    assert pinned in card.text
    assert "variant: gated-reg" in card.text  # the training recipe


def tree_digest(*folders: Path) -> dict[str, str]:
    """Every file under `folders` (relative name -> sha256 of its bytes)."""
    return {
        str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_canvas_model_is_evaluated_on_the_canvases_its_recipe_names(tmp_path, capsys, monkeypatch):
    from sink_models.training import train

    options = {"size": 32, "digit_size": 8, "noise": 0.05, "distractors": 1}
    overrides = {"image_size": 32, "patch_size": 8, "num_channels": 1, "num_hidden_layers": 1, "hidden_size": 16}
    train(
        ModelArguments(variant="plain", model_overrides=json.dumps(overrides)),
        DataArguments(dataset="canvas-digits", dataset_options=json.dumps(options), augment=False),
        TrainArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_batch_size=16, warmup_steps=1),
    )
    folder = tmp_path / "run" / "model"
    recorded = json.loads((folder / "training_args.json").read_text())["data"]
    assert (recorded["dataset"], json.loads(recorded["dataset_options"])) == ("canvas-digits", options)
    # A user's model, evaluated with the default outputs: its own folders, never the repository's results or cards
    # (a canvas model once rewrote results/images.md, the zoo's paper tables).
    before = tree_digest(ROOT / "results", ROOT / "model_cards")
    monkeypatch.chdir(tmp_path)
    code, out = run(["--model", folder, "--trust_remote_code"], capsys)
    assert code == 0, out
    # It never goes silent: a timed line per stage, progress bars between them.
    stages = [line.split(" ", 1)[1] for line in out.splitlines() if re.match(r"\d+:\d\d ", line)]
    assert stages == [
        f"[1/1] {folder}: accuracy and sinks",
        f"writing results to {os.path.join('runs', 'eval', 'results')}/ and model cards to runs/eval/cards/",
        "done",
    ]
    assert "run: 100%" in out and "results and cards: 100%" in out
    assert tree_digest(ROOT / "results", ROOT / "model_cards") == before
    written = tmp_path / "runs" / "eval"
    result = json.loads((written / "results" / "run.json").read_text())  # named after its run
    assert result["dataset"]["name"] == "canvas-digits" and result["dataset"]["options"] == options
    assert result["dataset"]["images"] == 359 and result["accuracy"] is not None
    assert sorted(p.name for p in (written / "results").iterdir()) == ["images.md", "images.png", "run.json"]
    assert (written / "cards" / "run" / "README.md").is_file()


@pytest.mark.parametrize("option", ["--results_dir", "--cards_dir"])
def test_a_users_run_may_not_write_into_the_repositorys_results(option, capsys, monkeypatch):
    folder = {"--results_dir": ROOT / "results", "--cards_dir": ROOT / "model_cards"}[option]
    for target in (folder, folder / "scratch"):
        monkeypatch.chdir(ROOT)
        code, out = run(["--model", "some/model", option, os.path.relpath(target)], capsys)
        assert code == 2 and not (folder / "scratch").exists()
        assert out.startswith(f"error: {option[2:]}: {os.path.relpath(target)!r} is the repository's {folder.name}/")
        assert "allowed: any other folder (default: runs/eval/" in out


def test_loader_workers_and_bf16_autocast(checkpoint, tmp_path, capsys):
    argv = ["--model", checkpoint, "--trust_remote_code", "--max_images", 24, "--batch_size", 8]
    assert run([*argv, "--dataloader_num_workers", 0, *outputs(tmp_path / "zero")], capsys)[0] == 0
    assert run([*argv, "--dataloader_num_workers", 2, *outputs(tmp_path / "two")], capsys)[0] == 0
    assert run([*argv, "--autocast", "bf16", *outputs(tmp_path / "bf16")], capsys)[0] == 0
    zero, two, bf16 = (
        json.loads((tmp_path / name / "results" / "vit-planted.json").read_text()) for name in ("zero", "two", "bf16")
    )
    assert two["accuracy"] == zero["accuracy"] and two["sinks"] == zero["sinks"]  # workers decode the same images
    assert_nested_close(two["heads"], zero["heads"], rel=1e-9, where="heads")
    # Under bf16 autocast the planted sinks stay what they are (the tolerances of the bf16 diagnostics test).
    assert bf16["sinks"]["sinks_per_image"] == zero["sinks"]["sinks_per_image"] == 2.0
    for got, want in zip(bf16["heads"], zero["heads"], strict=True):
        assert (got["nop"], got["broadcast"]) == (want["nop"], want["broadcast"])
        assert abs(got["max_inflow"] - want["max_inflow"]) <= 0.02
    code, out = run([*argv, "--autocast", "fp8", *outputs(tmp_path / "bad")], capsys)
    assert code == 2 and "autocast: got 'fp8'; allowed: no, bf16 or fp16." in out


def test_dense_probe_on_a_canvas_model(tmp_path, capsys):
    from sink_models.data import Canvas, canvas_dense, patch_labels
    from sink_models.probes.linear import linear_probe, patch_features

    model_dir = ROOT / "zoo" / "vit-plain"
    argv = ["--model", model_dir, "--max_images", 24, "--dense_probe", "--dense_probe_train_images", 48]
    code, out = run([*argv, *outputs(tmp_path)], capsys)
    assert code == 0, out
    block = json.loads((tmp_path / "results" / "vit-plain.json").read_text())["dense_probe"]
    assert block["settings"] == {
        "train_images": 48, "eval_images": 24, "min_share": 0.25, "optimizer": "lbfgs", "weight_decay": 1e-4,
        "ignore_index": None, "features": "final normed patch tokens", "resolution": [64, 64],
    }  # fmt: skip
    assert (block["dataset"], block["split"], block["layer"], block["classes"][:2]) == (
        "canvas-digits", "test", None, ["background", "0"]
    )  # fmt: skip
    # The same probe by hand on the same canvases (the recipe's canvas options) gives the same scores.
    from transformers import AutoImageProcessor

    from sink_models import SinkViTForImageClassification

    model = SinkViTForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    options = json.loads((model_dir / "training_args.json").read_text())["data"]["dataset_options"]
    canvas = Canvas(**json.loads(options))

    def features(split, limit):
        images, maps, _ = canvas_dense(canvas, split, limit=limit)
        pixels = processor([Image.fromarray(i).convert("L") for i in images], return_tensors="pt")["pixel_values"]
        return patch_features(model, [pixels]), torch.as_tensor(patch_labels(maps, 8, 0.25)).long(), maps

    (train_x, train_y, _), (eval_x, eval_y, eval_maps) = features("train", 48), features("eval", 24)
    expected = linear_probe(train_x, train_y, eval_x, eval_y, 11, eval_pixel_labels=torch.as_tensor(eval_maps).long())
    for key in ("miou", "foreground_miou", "accuracy", "pixel_miou", "pixel_accuracy"):
        assert block[key] == pytest.approx(getattr(expected, key), rel=1e-6), key
    assert block["iou"] == {str(c): pytest.approx(v, rel=1e-6) for c, v in expected.iou.items()}
    code, out = run(["--model", model_dir, "--dataset", "digits", "--dense_probe", *outputs(tmp_path / "b")], capsys)
    assert code == 2 and "dense_probe: 'digits' has no dense labels; pass --dense_probe_dataset" in out


def test_non_finite_figures_are_written_as_null_and_named(checkpoint, tmp_path, capsys):
    """A model whose activations overflow still gets results; both models of the run are written, nothing crashes."""
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(checkpoint, tmp_path / "vit-overflow")
    weights = load_file(folder / "model.safetensors")
    (cls_token,) = [name for name in weights if name.endswith("cls_token")]
    weights[cls_token] = torch.full_like(weights[cls_token], float("inf"))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    argv = ["--model", checkpoint, folder, "--trust_remote_code", "--max_images", 4, *outputs(tmp_path)]
    code, out = run(argv, capsys)
    assert code == 0, out
    fine, overflow = (
        json.loads((tmp_path / "results" / f"{n}.json").read_text()) for n in ("vit-planted", "vit-overflow")
    )
    assert "non_finite" not in fine and fine["heads"][0]["max_inflow"] is not None
    assert all(head["max_inflow"] is None for head in overflow["heads"])  # NaN attention: undefined, not a number
    assert {f"heads[{i}].max_inflow" for i in range(len(overflow["heads"]))} <= set(overflow["non_finite"])
    assert all(layer["token_norm_max_over_median"] is None for layer in overflow["layers"])
    assert f"warning: vit-overflow: {len(overflow['non_finite'])} figures are NaN or inf" in out
    assert (tmp_path / "cards" / "vit-overflow" / "README.md").is_file()


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(checkpoint, tmp_path, capsys):
    (tmp_path / "cards").write_text("a file")
    code, out = run(["--model", checkpoint, "--trust_remote_code", *outputs(tmp_path)], capsys)
    assert (code, out.strip()) == (
        2,
        f"error: cards_dir: {str(tmp_path / 'cards')!r} is a file; allowed: a folder (made if missing).",
    )
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("suite", ["zoo", "synthetic", "interventions"])
def test_a_repository_suite_on_ones_own_models_writes_to_ones_own_folders(suite):
    args = eval_run.parse(["--suite", suite, "--model", "my-org/my-model"])
    assert (args.results_dir, args.cards_dir) == ("runs/eval/results", "runs/eval/cards")
    repository = eval_run.parse(["--suite", suite])
    assert Path(repository.results_dir).resolve() == ROOT / "results"

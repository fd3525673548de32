"""The sink inspector Space (spaces/inspector/) against the local Hub-compatible server: its runner (checkpoints
fetched without their code, the limits, the cache, the attention maps of any image, the opt-in results row) and the
app in headless Chromium."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import STOCK_SIZES, assert_nested_close, free_port, tiny_config
from hub_server import HubServer
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.utils import _detect_agent
from PIL import Image
from planted import plant
from safetensors.torch import save_file
from test_hub_server import TOKEN
from test_inspect import assert_same_report
from test_leaderboard import BROWSER
from transformers import (
    AutoImageProcessor,
    BertConfig,
    BertModel,
    BitImageProcessorPil,
    ConvNextConfig,
    ConvNextImageProcessorPil,
    ConvNextModel,
    Dinov2Config,
    Dinov2Model,
)

from sink_models import SinkViTForImageClassification
from sink_models.checkpoint import save_checkpoint
from sink_models.diagnostics import diagnose
from sink_models.inspection import builtin_images

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "spaces" / "inspector"))
import runner  # noqa: E402

ORG = "testorg"
FIGURE_FILES = ("events_by_head.png", "sink_types_by_layer.png", "diagnostic_plane.png")
DINO, SINKVIT = f"{ORG}/tiny-dinov2", f"{ORG}/tiny-sinkvit"


def _evil(marker: Path) -> str:
    """Python that leaves `marker` behind if it is ever imported."""
    return f"from pathlib import Path\nPath({str(marker)!r}).write_text('the checkpoint code ran')\n"


def _upload(api: HfApi, repo_id: str, folder: Path) -> None:
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The local Hub with a tiny DINOv2 and a tiny SinkViT (planted NOP and broadcast heads in layer 0) whose code
    files would leave a marker, and the repos the inspector must refuse."""
    root = tmp_path_factory.mktemp("inspector-hub")
    marker = root / "marker"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "0")
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        patch.setattr(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY)
        with HubServer() as server:
            api = HfApi(endpoint=server.url, token=TOKEN)
            models = {}
            torch.manual_seed(0)
            dino = Dinov2Model(Dinov2Config(**STOCK_SIZES, intermediate_size=64)).eval()
            x = torch.randn(2, 3, 16, 16)
            plant(dino, x, head=0, target=0, kind="nop")
            plant(dino, x, head=2, target=0, kind="broadcast")
            dino.save_pretrained(root / "dino")
            BitImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(
                root / "dino"
            )
            models[DINO] = dino
            sinkvit = SinkViTForImageClassification(tiny_config("gated-reg")).eval()
            plant(sinkvit, x, head=1, target=2, kind="nop")  # on register 2 (CLS is token 0)
            plant(sinkvit, x, head=3, target=0, kind="broadcast")
            folder = save_checkpoint(sinkvit, root / "sinkvit")
            for path in folder.glob("*.py"):
                path.write_text(_evil(marker))
            models[SINKVIT] = sinkvit
            (root / "remote").mkdir()
            config = {"model_type": "evil_vit", "auto_map": {"AutoConfig": "evil.C", "AutoModel": "evil.M"}}
            (root / "remote" / "config.json").write_text(json.dumps(config | {"image_size": 16}))
            (root / "remote" / "evil.py").write_text(_evil(marker))
            save_file({"weight": torch.zeros(2)}, root / "remote" / "model.safetensors")
            convnext = ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=16))
            convnext.save_pretrained(root / "convnext")
            ConvNextImageProcessorPil(size={"shortest_edge": 16}).save_pretrained(root / "convnext")
            small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
            BertModel(BertConfig(**small, vocab_size=100)).save_pretrained(root / "bert")
            (root / "pickled").mkdir()
            shutil.copy(root / "dino" / "config.json", root / "pickled" / "config.json")
            (root / "pickled" / "pytorch_model.bin").write_bytes(b"a pickle the inspector must never open")
            _refused_repos(root, marker)
            for name in ("dino", "sinkvit", "remote", "convnext", "bert", "pickled", "deep", "index", "processor"):
                repo = {"dino": DINO, "sinkvit": SINKVIT}.get(name, f"{ORG}/{name}")
                _upload(api, repo, root / name)
            # Not attributes of the server: its request threads, which may end only as the interpreter exits, keep
            # it alive, and a model freed from such a thread then aborts the process (libtorch's exit unwinding).
            yield SimpleNamespace(server=server, url=server.url, api=api, marker=marker, models=models)
            models.clear()
    assert not marker.exists(), "a checkpoint's own code ran"


def _refused_repos(root: Path, marker: Path) -> None:
    """A config 100,000 layers deep, a shard index naming a file outside the repo, a processor asking for its code."""
    config = json.loads((root / "dino" / "config.json").read_text())
    (root / "deep").mkdir()
    (root / "deep" / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 100_000}))
    save_file({"weight": torch.zeros(2)}, root / "deep" / "model.safetensors")
    shutil.copytree(root / "dino", root / "index")
    shutil.move(root / "index" / "model.safetensors", root / "index" / "model-00001-of-00001.safetensors")
    weights = {"embeddings.cls_token": "../../../elsewhere/model.safetensors"}
    (root / "index" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weights}))
    shutil.copytree(root / "dino", root / "processor")
    processor = json.loads((root / "processor" / "preprocessor_config.json").read_text())
    processor |= {"image_processor_type": "EvilProcessor", "auto_map": {"AutoImageProcessor": "evil.EvilProcessor"}}
    (root / "processor" / "preprocessor_config.json").write_text(json.dumps(processor))
    (root / "processor" / "evil.py").write_text(_evil(marker))


@pytest.fixture
def inspector(hub, tmp_path):
    return runner.Inspector(tmp_path / "cache", endpoint=hub.url)


@pytest.mark.parametrize("repo_id", [DINO, SINKVIT])
def test_a_report_equals_diagnose_of_the_original_and_is_cached(repo_id, hub, inspector, monkeypatch):
    found = inspector.images(None, 5)
    entry = inspector.run(repo_id, None, found)
    report = entry.report()
    commit = hub.api.model_info(repo_id).sha
    assert entry.checkpoint.commit == commit
    assert report.summary["inputs"] | {"images": None} == {
        "model": repo_id,
        "revision": None,
        "commit": commit,
        "images_from": found.source,
        "images": None,
        "skipped": [],
    }
    names = report.summary["inputs"]["images"]
    assert len(names) == 5
    model = hub.models[repo_id]
    expected = diagnose(_base(model), [_batch(entry, names)])
    assert_same_report(report, expected)
    assert entry.checkpoint.parameters == sum(p.numel() for p in _base(model).parameters())
    # Only data was fetched: the config, the processor's config and the safetensors weights.
    assert sorted(path.name for path in entry.checkpoint.download().iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    with zipfile.ZipFile(entry.archive) as archive:
        assert set(archive.namelist()) == {
            "report.md",
            "report.json",
            "heads.csv",
            *FIGURE_FILES,
            "attention_layer0.png",  # the layer of the planted sinks
        }
        written = json.loads(archive.read("report.json"))
    assert_nested_close(written["layers"], expected.layers, rel=1e-6, abs=1e-9)
    assert_nested_close(written["heads"], expected.heads, rel=1e-6, abs=1e-9)

    def never(*args, **kwargs):
        raise AssertionError("the cached report was computed again")

    monkeypatch.setattr(runner, "diagnose_images", never)
    again = runner.Inspector(inspector.cache, endpoint=hub.url).run(repo_id, None, inspector.images(None, 5))
    assert again.key == entry.key and again.report().summary == report.summary
    with pytest.raises(AssertionError, match="computed again"):  # other images: another report
        inspector.run(repo_id, None, inspector.images(None, 4))


def _base(model):
    return model.sink_vit if hasattr(model, "sink_vit") else model


def _batch(entry, names: list[str]) -> dict:
    processor = AutoImageProcessor.from_pretrained(entry.checkpoint.download())
    pictures = dict(builtin_images())
    return dict(processor(images=[pictures[name] for name in names], return_tensors="pt"))


def test_a_new_commit_is_inspected_again_and_a_revision_pins_the_old_one(hub, inspector, tmp_path):
    first = inspector.run(DINO, None, inspector.images(None, 2))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("a new commit\n")
    hub.api.upload_folder(repo_id=DINO, folder_path=tmp_path / "notes")
    second = inspector.run(DINO, None, inspector.images(None, 2))
    assert second.checkpoint.commit != first.checkpoint.commit and second.key != first.key
    pinned = inspector.run(DINO, first.checkpoint.commit, inspector.images(None, 2))
    assert pinned.key == first.key and pinned.checkpoint.revision == first.checkpoint.commit


def test_the_attention_maps_of_any_image_are_those_diagnose_keeps_for_it(hub, inspector):
    entry = inspector.run(DINO, None, inspector.images(None, 4))
    names = entry.report().summary["inputs"]["images"]
    run = lambda **options: diagnose(hub.models[DINO], [_batch(entry, names)], **options)  # noqa: E731
    for image in (0, 2, 3):
        maps = inspector.attention_maps(entry.key, image).attention
        expected = run(attention_image=image).attention
        assert maps["image"] == image and maps["grid"] == expected["grid"]
        np.testing.assert_allclose(np.array(maps["inflow"]), np.array(expected["inflow"]), rtol=1e-5, atol=1e-7)
    path = inspector.attention(entry.key, 2, 1)
    assert path.name == "image002-layer001.png" and Image.open(path).size[0] > 400
    assert inspector.attention(entry.key, 2, 1) == path  # drawn once
    for image, layer, message in ((4, 0, "image 4; allowed: 0-3"), (0, 2, "layer 2; allowed: 0-1")):
        with pytest.raises(runner.InputError, match=message):
            inspector.attention(entry.key, image, layer)
    with pytest.raises(runner.InputError, match="no report yet"):
        inspector.attention("nothing", 0, 0)


REFUSED = {
    "not an id": ("no such id!", None, "is not a Hub model id; allowed: org/name"),
    "missing": (f"{ORG}/nothing-here", None, "is not on the Hub (or is private or gated)"),
    "missing revision": (DINO, "no-such-branch", "'no-such-branch' is not a branch, tag or commit"),
    "unsupported": (f"{ORG}/convnext", None, "ConvNextModel (model_type 'convnext') is not supported"),
    "text model": (f"{ORG}/bert", None, "is a bert model without a vision encoder"),
    "remote code": (f"{ORG}/remote", None, "asks for its own code (config.json's auto_map)"),
    "pickled weights": (f"{ORG}/pickled", None, "has no safetensors weights; the inspector loads safetensors only"),
    "too deep": (f"{ORG}/deep", None, "has num_hidden_layers = 100,000, over the 64 this Space builds"),
    "processor code": (f"{ORG}/processor", None, "has an image processor that asks for its own code"),
    "index outside": (f"{ORG}/index", None, "shard index names files that are not its own shards: ['../../../else"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_before_any_weight_is_fetched(case, hub, inspector):
    model_id, revision, message = REFUSED[case]
    hub.server.requests.clear()
    with pytest.raises(runner.InputError, match=re.escape(message)) as refused:
        inspector.run(model_id, revision, inspector.images(None, 1))
    assert "\n" not in str(refused.value)
    assert not [r for r in hub.server.requests if r.path.endswith((".safetensors", ".bin", ".py"))]
    assert not hub.marker.exists()
    assert not inspector.cache.exists() or not any(inspector.cache.iterdir())


def test_a_processor_asking_for_its_own_code_is_refused_when_loading_too(hub, inspector, monkeypatch):
    """Refused before the weights (REFUSED); and were that check gone, transformers refuses it without running it."""
    info = hub.api.model_info(f"{ORG}/processor", files_metadata=True)
    files = ("config.json", "preprocessor_config.json", "model.safetensors")
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings}
    folder = inspector.weights / "processor"
    checkpoint = runner.Checkpoint(f"{ORG}/processor", None, info.sha, files, 0, folder, sizes, endpoint=hub.url)
    checkpoint.download()
    monkeypatch.setattr(runner, "fetch", lambda *args, **kwargs: checkpoint)
    with pytest.raises(runner.InputError, match=f"model: '{ORG}/processor' has no usable image processor") as no:
        inspector.run(f"{ORG}/processor", None, inspector.images(None, 1))
    assert "contains custom code" in str(no.value) and str(inspector.weights) not in str(no.value)
    assert not hub.marker.exists()
    assert not [r for r in hub.server.requests if r.path.endswith(".py")]


def test_the_limits_are_stated_and_enforced(hub, tmp_path):
    def refused(message: str, images: int = 1, **limits) -> None:
        inspector = runner.Inspector(tmp_path, endpoint=hub.url, limits=runner.Limits(**limits))
        with pytest.raises(runner.InputError, match=message):
            inspector.run(DINO, None, inspector.images(None, images))

    count = sum(p.numel() for p in hub.models[DINO].parameters())
    refused(
        f"has {count:,} parameters, over this Space's limit of 10,000 .* sink-models inspect {DINO}$", parameters=10_000
    )
    refused(
        r"has 0.00 GB of safetensors weights, more than 1,000 float32 parameters take",
        parameters=1000,
        config_bytes=100,
    )
    refused("has a config.json of [0-9,]+ bytes; allowed: a small JSON file", config_bytes=100)
    refused(
        rf"images: the model's image processor makes 16 patches of china.jpg \(whole\), over this Space's 10 per "
        f"image. On your machine: sink-models inspect {DINO}$",
        tokens=10,
    )
    refused(
        f"time: over this Space's limit per request while reading the model's files from the Hub. On your machine: "
        f"sink-models inspect {DINO}$",
        seconds=0,
    )
    timed = runner.Inspector(tmp_path, endpoint=hub.url, limits=runner.Limits(seconds=0))
    tight = runner.Inspector(tmp_path, endpoint=hub.url, limits=runner.Limits(pixels=300))
    for count in (0, 17):
        with pytest.raises(runner.InputError, match="max images: got .*; allowed: 1 to 16"):
            timed.images(None, count)
    files = []
    for i, size in enumerate([(10, 10), (40, 40)]):
        Image.new("RGB", size, (i, 0, 0)).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "notes.txt").write_text("not an image")
    # PostScript named .png: PIL would hand it to Ghostscript; the inspector reads picture formats only.
    (tmp_path / "eps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    found = tight.images([files[0], str(tmp_path / "notes.txt"), str(tmp_path / "eps.png")], 5)
    assert found.names == ["0.png"] and found.skipped == ["notes.txt", "eps.png"]
    assert found.source == "3 uploaded images"
    with pytest.raises(runner.InputError, match="images: 1.png is 40 x 40 pixels, over 0.0003 megapixels; allowed"):
        tight.images(files, 5)
    with pytest.raises(runner.InputError, match="none of the 1 uploaded files is an image"):
        tight.images([str(tmp_path / "notes.txt")], 5)
    with pytest.raises(runner.InputError, match="images: 17 uploaded; allowed: at most 16"):
        tight.images(files * 8 + files[:1], 5)
    assert "100 M parameters" in runner.Limits().text() and "16 images" in runner.Limits().text()


def test_a_results_row_is_published_only_with_a_token(hub, inspector, tmp_path):
    entry = inspector.run(DINO, None, inspector.images(None, 2))
    for token in (None, " "):
        with pytest.raises(runner.InputError, match="token: publishing needs a Hub write token"):
            inspector.publish(entry.key, f"{ORG}/inspections", token)
    hub.server.fail_next(status=403, route_contains="repos/create")  # a read-only token: the Hub refuses
    with pytest.raises(runner.InputError, match="publish: 'testorg/inspections' could not be written: .*403") as no:
        inspector.publish(entry.key, f"{ORG}/inspections", TOKEN)
    assert TOKEN not in str(no.value)
    with pytest.raises(runner.InputError, match="is not a Hub dataset id"):
        inspector.publish(entry.key, "not a dataset!", TOKEN)
    path = inspector.publish(entry.key, f"{ORG}/inspections", TOKEN)
    row = json.loads(
        Path(hf_hub_download(f"{ORG}/inspections", path, repo_type="dataset", endpoint=hub.url)).read_text()
    )
    report = entry.report()
    assert row["model"] == DINO and row["commit"] == entry.checkpoint.commit and row["images"] == 2
    assert row["layers"] == report.layers and row["summary"]["sinks_per_image"] == report.summary["sinks_per_image"]


def _load_app():
    spec = importlib.util.spec_from_file_location("inspector_app", ROOT / "spaces" / "inspector" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _status(page, expected: str, timeout: float = 90) -> str:
    """The status line once it contains `expected`."""
    deadline = time.monotonic() + timeout
    while expected not in (text := page.locator("#status").inner_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return text


def _settled(page) -> None:
    """Every figure loaded and laid out (a screenshot taken while they load shows them cropped)."""
    page.wait_for_function("[...document.images].every((image) => image.complete && image.naturalWidth > 0)")
    time.sleep(1)


def _inspect(page, model_id: str) -> None:
    page.locator("#model-id").locator("input, textarea").first.fill(model_id)
    page.locator("#inspect").click()


def test_the_app_in_a_browser(hub, inspector, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    port = free_port()
    demo = _load_app().build(inspector, [SINKVIT])
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        allowed_paths=[str(inspector.cache)],
    )
    shots = Path(os.environ.get("SINK_MODELS_SCREENSHOTS", tmp_path))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER)
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#inspect", timeout=60_000)
            _refusals_are_one_line(page, inspector, monkeypatch)
            _a_stock_model(page, hub, inspector, tmp_path, shots)
            _a_zoo_model_and_uploads(page, hub, tmp_path, shots, monkeypatch)
            browser.close()
    finally:
        demo.close()
    assert (shots / "inspector.png").stat().st_size > 50_000
    assert not hub.marker.exists()


def _refusals_are_one_line(page, inspector, monkeypatch) -> None:
    _inspect(page, "no such id!")
    assert "is not a Hub model id" in _status(page, "is not a Hub model id")
    _inspect(page, f"{ORG}/convnext")
    assert "is not supported by the diagnostics" in _status(page, "not supported")
    with monkeypatch.context() as broken:  # a failure nobody foresaw: one line in the page, the app stays up
        broken.setattr(inspector, "run", lambda *args: (_ for _ in ()).throw(RuntimeError("boom\nmore")))
        _inspect(page, DINO)
        assert _status(page, "boom").strip().endswith("error: RuntimeError: boom")


def _a_stock_model(page, hub, inspector, tmp_path: Path, shots: Path) -> None:
    """DINOv2: the tables and figures, another image's maps, the download."""
    _inspect(page, DINO)
    count = sum(p.numel() for p in hub.models[DINO].parameters())
    assert f"Done: {DINO}, {count:,} parameters, 8 images." in _status(page, f"Done: {DINO}")
    report = next(iter(inspector.entries.values())).report()
    assert "tiny-dinov2" in page.locator("#summary").inner_text()
    assert "Dinov2Model" in page.locator("#summary").inner_text()
    rows = page.locator("#layers [role=row].virtual-row")
    assert rows.count() == 2
    first = rows.nth(0).locator("[role=gridcell]").all_inner_texts()
    assert float(first[1]) == round(report.layers[0]["events"] / 8, 2) > 0  # the planted sinks of layer 0
    for name in ("events_by_head", "diagnostic_plane", "sink_types_by_layer", "attention"):
        page.wait_for_selector(f"#{name} img", timeout=30_000)
    _settled(page)
    page.screenshot(path=str(shots / "inspector.png"), full_page=True)

    page.locator("#image-choice input").click()  # another image's maps: one more forward pass
    page.locator("li", has_text="flower.jpg (whole)").click()
    page.wait_for_selector("#attention img[src*='image004-layer000']", timeout=30_000)

    with page.expect_download() as download:
        page.locator("#download a").first.click()
    saved = tmp_path / "report.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert {"report.md", "report.json", "heads.csv", "events_by_head.png"} <= set(archive.namelist())
        assert json.loads(archive.read("report.json"))["layers"] == report.layers


def _a_zoo_model_and_uploads(page, hub, tmp_path: Path, shots: Path, monkeypatch) -> None:
    """The SinkViT zoo button, with the run's progress in the page; then the same model on two uploaded images."""
    diagnose_images = runner.diagnose_images

    def slowly(*args, **kwargs):  # time to see the progress of a run in the page
        report = diagnose_images(*args, **kwargs)
        time.sleep(3)
        return report

    monkeypatch.setattr(runner, "diagnose_images", slowly)
    page.locator("#zoo-0").click()  # a zoo model in one click
    page.wait_for_selector("text=diagnosed 8 of 8 images", timeout=60_000)
    assert f"Done: {SINKVIT}" in _status(page, f"Done: {SINKVIT}")
    page.wait_for_function("document.querySelector('#summary').innerText.includes('SinkViTModel')")
    assert "register 50.0%" in page.locator("#summary").inner_text()  # the NOP sink sits on a register
    page.wait_for_selector("#attention img", timeout=30_000)
    _settled(page)
    page.screenshot(path=str(shots / "inspector-sinkvit.png"), full_page=True)

    for i in range(2):  # the user's own images instead of the built-in set
        Image.fromarray(np.full((24, 20, 3), 60 * i, dtype=np.uint8)).save(tmp_path / f"mine-{i}.png")
    page.locator("#images input[type=file]").set_input_files([str(tmp_path / f"mine-{i}.png") for i in (0, 1)])
    page.wait_for_selector("#images td[aria-label='mine-1.png']", timeout=30_000)
    page.locator("#inspect").click()
    count = sum(p.numel() for p in _base(hub.models[SINKVIT]).parameters())
    assert f"Done: {SINKVIT}, {count:,} parameters, 2 images." in _status(page, "2 images.")
    assert "2 uploaded images" in page.locator("#summary").inner_text()


def test_the_staged_space_runs_on_its_own_copy_of_the_library(tmp_path):
    from sink_models.hub.publish import stage_inspector

    folder = stage_inspector(ROOT / "spaces" / "inspector", [DINO, SINKVIT], tmp_path / "space")
    code = (
        "import json, app, runner, sink_models; "
        "print(json.dumps([app.zoo_models(), sink_models.__file__, runner.__file__, app.build.__module__]))"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    zoo, package, module, _ = json.loads(done.stdout.strip().splitlines()[-1])
    assert zoo == [DINO, SINKVIT]
    assert Path(package).resolve() == (folder / "sink_models" / "__init__.py").resolve()
    assert Path(module).resolve() == (folder / "runner.py").resolve()

"""The inspector Space bounded before the work (issue 23, items 8-11): hostile repos made here and served by the local
Hub, each refused with one line before the work it would cost (processing, loading, fetching), the attention
implementation the Space's own, the time limit held during downloads, the stores on disk bounded, and no local path
in any line the page shows."""

import json
import re
import shutil
import threading
from pathlib import Path

import pytest
import test_inspector
import torch
import transformers
from PIL import Image
from test_images_bounds import _png_header
from test_inspector import DINO, ORG, SINKVIT, _upload, runner
from transformers import BitImageProcessorPil, ViTImageProcessorPil
from transformers.integrations import hub_kernels

COMMAND = "On your machine: sink-models inspect"
hub = test_inspector.hub  # the local Hub with the tiny DINOv2 and SinkViT repos, once for this module


@pytest.fixture
def inspector(hub, tmp_path):
    return runner.Inspector(tmp_path / "cache", endpoint=hub.url)


def _repo(hub, tmp_path: Path, name: str, config: dict | None = None, processor=None, files: dict | None = None) -> str:
    """A copy of the tiny DINOv2 repo as `ORG/name`, with config fields replaced, another image processor, or files
    (name -> text) added or replaced; uploaded to the local Hub."""
    folder = tmp_path / name
    shutil.copytree(_dino(hub, tmp_path), folder)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(json.loads((folder / "config.json").read_text()) | config))
    if processor is not None:
        processor.save_pretrained(folder)
    for path, text in (files or {}).items():
        (folder / path).write_text(text)
    _upload(hub.api, f"{ORG}/{name}", folder)
    return f"{ORG}/{name}"


def _dino(hub, tmp_path: Path) -> Path:
    """The tiny DINOv2 repo's data files, fetched as the Space fetches them."""
    return runner.fetch(DINO, None, limits=runner.Limits(), store=tmp_path / "dino", endpoint=hub.url).download()


def _one():
    return runner.collect_images(max_images=1)


def _refused(inspector, hub, repo_id: str, found=None) -> str:
    """The one line `repo_id` is refused with, after checking that no weight was fetched for it."""
    hub.server.requests.clear()
    with pytest.raises(runner.InputError) as refused:
        inspector.run(repo_id, None, found or _one())
    assert "\n" not in str(refused.value)
    assert not [r for r in hub.server.requests if r.path.endswith((".safetensors", ".bin"))]
    return str(refused.value)


# Item 8: patches and pixels predicted from the processor's settings and the images' headers, before the work.


def test_a_processor_resizing_to_6000_pixels_is_refused_before_the_weights(hub, inspector, tmp_path, monkeypatch):
    repo = _repo(hub, tmp_path, "huge-resize", processor=ViTImageProcessorPil(size={"height": 6000, "width": 6000}))
    monkeypatch.setattr(transformers.ViTImageProcessorPil, "__call__", _never)
    assert _refused(inspector, hub, repo) == (
        "images: the model's image processor makes 2,250,000 patches of china.jpg (whole), over this Space's 2,048 "
        f"per image. {COMMAND} {repo}"
    )


def _never(*args, **kwargs):
    raise AssertionError("the image processor ran")


def test_a_long_upload_with_the_stock_dinov2_processor_is_refused_before_it_is_resized(
    hub, inspector, tmp_path, monkeypatch
):
    # DINOv2's own resize (shortest edge 256), with a crop of as many patches as its 224 crop gives 14-pixel patches
    stock = BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 64, "width": 64})
    repo = _repo(hub, tmp_path, "stock-processor", processor=stock)
    Image.new("L", (250_000, 64)).save(tmp_path / "long.png")  # 16.0 megapixels as decoded: within the limit
    found = inspector.images([str(tmp_path / "long.png")], 1)
    monkeypatch.setattr(transformers.BitImageProcessorPil, "__call__", _never)
    assert _refused(inspector, hub, repo, found) == (
        "images: the model's image processor resizes long.png to 256.0 megapixels, over this Space's 16. "
        f"{COMMAND} {repo}"
    )


def test_an_upload_is_refused_from_its_header_before_it_is_decoded(inspector, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(20_000, 1_000))  # no pixel data at all: decoding it would fail, not refuse it
    with pytest.raises(runner.InputError) as refused:
        inspector.images([str(bomb)], 1)
    assert (
        str(refused.value) == "images: bomb.png is 20,000 x 1,000 pixels, over 16 megapixels; allowed: smaller images."
    )


# Item 9: the Space's attention implementation, never the one a config names.


def test_a_config_naming_a_hub_kernel_is_loaded_with_the_spaces_attention(hub, inspector, tmp_path, monkeypatch):
    evil = {"attn_implementation": "evilorg/evil-kernel", "_attn_implementation": "evilorg/evil-kernel"}
    repo = _repo(hub, tmp_path, "kernel-config", config=evil)
    lookups = []
    for module, name in ((transformers.modeling_utils, "lazy_import_flash_attention"), (hub_kernels, "get_kernel")):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, lambda *args, **kwargs: lookups.append(args))
    monkeypatch.setattr(hub_kernels, "load_and_register_attn_kernel", lambda *args, **kwargs: lookups.append(args))
    hub.server.requests.clear()
    entry = inspector.run(repo, None, _one())
    assert lookups == [] and not [r for r in hub.server.requests if "evilorg" in r.path]
    model = inspector._loaded[1][0]
    assert model.config._attn_implementation == runner.ATTENTION == "sdpa"
    assert entry.report().model["layers"] == 2


# Item 10: data files are never shards, and auto_map is found however it is spelled or nested.


@pytest.mark.parametrize("shard", ["config.json", "model.safetensors.index.json", "preprocessor_config.json"])
def test_a_shard_index_naming_a_data_file_is_refused(shard, hub, inspector, tmp_path):
    index = json.dumps({"metadata": {}, "weight_map": {"embeddings.cls_token": shard}})
    repo = _repo(hub, tmp_path, f"index-{shard.split('.')[0]}", files={"model.safetensors.index.json": index})
    assert _refused(inspector, hub, repo) == (
        f"model: '{repo}''s shard index names files that are not its own shards: ['{shard}']; allowed: its "
        "root-level .safetensors files."
    )


def test_an_escaped_or_nested_auto_map_is_refused(hub, inspector, tmp_path):
    processor = json.loads(BitImageProcessorPil().to_json_string())
    text = json.dumps(processor)[:-1] + ', "auto\\u005fmap": {"AutoImageProcessor": "evil.P"}}'
    repo = _repo(hub, tmp_path, "escaped-processor", files={"preprocessor_config.json": text})
    assert _refused(inspector, hub, repo).startswith(
        f"model: '{repo}' has an image processor that asks for its own code (preprocessor_config.json's auto_map)"
    )
    nested = _repo(hub, tmp_path, "nested-config", config={"extra": [{"auto_map": {"AutoModel": "evil.M"}}]})
    assert _refused(inspector, hub, nested).startswith(f"model: '{nested}' asks for its own code")


# Item 11: malformed structure fields, the time limit during downloads, bounded stores, no local paths.

MALFORMED = {
    "patch_size": (0, "has patch_size = 0; allowed: a positive integer or a pair of them."),
    "num_attention_heads": (0, "has num_attention_heads = 0; allowed: a positive integer."),
    "num_hidden_layers": (2.5, "has num_hidden_layers = 2.5; allowed: a positive integer."),
    "hidden_size": (-32, "has hidden_size = -32; allowed: a positive integer."),
    "image_size": ([16, -16], "has image_size = [16, -16]; allowed: a positive integer or a pair of them."),
}


@pytest.mark.parametrize("field", list(MALFORMED))
def test_a_malformed_structure_field_is_one_line(field, hub, inspector, tmp_path):
    value, message = MALFORMED[field]
    repo = _repo(hub, tmp_path, f"bad-{field.replace('_', '-')}", config={field: value})
    assert _refused(inspector, hub, repo) == f"model: '{repo}' {message}"


def test_a_config_nested_200000_deep_is_one_line(hub, inspector, tmp_path):
    config = json.loads((_dino(hub, tmp_path) / "config.json").read_text())
    deep = json.dumps(config)[:-1] + ', "extra": ' + "[" * 200_000 + "]" * 200_000 + "}"
    repo = _repo(hub, tmp_path, "deep-json", files={"config.json": deep})
    assert _refused(inspector, hub, repo) == (
        f"model: '{repo}' has a config.json that is not JSON this Space reads: nested too deeply."
    )


def test_a_slow_hub_is_abandoned_at_the_time_limit(hub, tmp_path):
    """A Hub that sends the weights 64 bytes every 50 ms (1.3 kB/s: 90 s for the tiny model) against a 2 s limit."""
    inspector = runner.Inspector(tmp_path / "cache", endpoint=hub.url, limits=runner.Limits(seconds=2))
    outcome = []

    def request() -> None:
        try:
            inspector.run(DINO, None, _one())
        except runner.InputError as error:
            outcome.append(str(error))

    hub.server.trickle(".safetensors", 0.05)
    try:
        worker = threading.Thread(target=request, daemon=True)
        worker.start()
        worker.join(120)  # a generous bound on the test, not a measurement: the request must return at all
    finally:
        hub.server.clear_faults()
    assert not worker.is_alive()
    assert outcome == [f"time: over this Space's limit per request while fetching model.safetensors. {COMMAND} {DINO}"]
    (folder,) = inspector.weights.iterdir()
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "preprocessor_config.json"]


def test_the_time_limit_holds_between_batches(tmp_path):
    checkpoint = runner.Checkpoint(DINO, None, "0" * 40, (), 0, tmp_path)
    watch = runner._watched(2, 0.0, runner.Limits(seconds=5), checkpoint, lambda *_: None)  # a deadline long past
    with pytest.raises(runner.InputError) as late:
        next(watch(iter([{"pixel_values": torch.zeros(1, 3, 4, 4)}])))
    assert str(late.value) == f"time: over this Space's 5 s per request after 0 of 2 images. {COMMAND} {DINO}"


def test_the_stores_keep_the_most_recent_within_their_bounds(hub, tmp_path):
    limits = runner.Limits(reports_bytes=1, weights_bytes=1)
    inspector = runner.Inspector(tmp_path / "cache", endpoint=hub.url, limits=limits)
    first = inspector.run(DINO, None, _one())
    second = inspector.run(SINKVIT, None, _one())
    assert [path.name for path in inspector.cache.iterdir()] == [second.key]
    assert [path.name for path in inspector.weights.iterdir()] == [second.checkpoint.folder.name]
    with pytest.raises(runner.InputError, match="attention: no report yet"):
        inspector.attention(first.key, 0, 0)
    counted = runner.Inspector(tmp_path / "counted", endpoint=hub.url, limits=runner.Limits(stored=2))
    keys = [counted.run(DINO, None, runner.collect_images(max_images=n)).key for n in (1, 2, 3)]
    assert sorted(path.name for path in counted.cache.iterdir()) == sorted(keys[1:])


def test_no_line_shows_a_local_path(inspector):
    weights = inspector.weights / "org--name--abc" / "model.safetensors"
    assert inspector.message(RuntimeError(f"cannot open {weights}\nmore")) == (
        "error: RuntimeError: cannot open <weights store>/org--name--abc/model.safetensors"
    )
    upload = OSError(f"cannot identify image file '/tmp/gradio/0a1b/cat.png' at {inspector.cache}/x")
    assert inspector.message(upload) == "error: OSError: cannot identify image file 'cat.png' at <report cache>/x"
    assert inspector.message(runner.InputError("model: see http://127.0.0.1:8000/api/models/a/b")) == (
        "model: see http://127.0.0.1:8000/api/models/a/b"
    )
    assert re.fullmatch(r"error: ValueError: x", inspector.message(ValueError("x")))

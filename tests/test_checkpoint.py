import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import images, tiny_config
from PIL import Image
from safetensors.torch import load_file, save_file

from sink_models import SinkViTForImageClassification, SinkViTModel
from sink_models.checkpoint import default_image_processor, save_checkpoint


@pytest.fixture
def model():
    return SinkViTForImageClassification(tiny_config("gated-reg", id2label={i: f"digit{i}" for i in range(5)})).eval()


def test_folder_layout(model, tmp_path):
    folder = save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(os.listdir(folder)) == [
        "config.json",
        "configuration_sink_vit.py",
        "model.safetensors",
        "modeling_sink_vit.py",
        "preprocessor_config.json",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_sink_vit.SinkViTConfig",
        "AutoModel": "modeling_sink_vit.SinkViTModel",
        "AutoModelForImageClassification": "modeling_sink_vit.SinkViTForImageClassification",
    }
    assert config["architectures"] == ["SinkViTForImageClassification"]
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 16, "width": 16}
    weights = load_file(folder / "model.safetensors")
    assert weights.keys() == model.state_dict().keys()


def test_save_load_round_trip_twice(model, tmp_path):
    x = images(model.config)
    with torch.no_grad():
        expected = model(x).logits
    first = SinkViTForImageClassification.from_pretrained(save_checkpoint(model, tmp_path / "a")).eval()
    second = SinkViTForImageClassification.from_pretrained(save_checkpoint(first, tmp_path / "b")).eval()

    def fields(config):
        return {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "dtype")}

    for loaded in (first, second):
        assert fields(loaded.config) == fields(model.config)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, expected, atol=1e-6, rtol=1e-6)
    assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()


def test_base_model_saves_and_loads(tmp_path):
    base = SinkViTModel(tiny_config("reg")).eval()
    loaded = SinkViTModel.from_pretrained(save_checkpoint(base, tmp_path / "base")).eval()
    x = images(base.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).last_hidden_state, base(x).last_hidden_state, atol=1e-6, rtol=1e-6)


def test_loading_never_unpickles(model, tmp_path, monkeypatch):
    folder = save_checkpoint(model, tmp_path / "ckpt")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    loaded = SinkViTForImageClassification.from_pretrained(folder)
    torch.testing.assert_close(loaded.classifier.weight, model.classifier.weight)


def test_a_folder_with_pickled_weights_only_is_refused(model, tmp_path):
    folder = save_checkpoint(model, tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):
        SinkViTForImageClassification.from_pretrained(folder)


def test_saved_folder_is_readable_by_others(model, tmp_path):
    umask = os.umask(0o022)
    try:
        folder = save_checkpoint(model, tmp_path / "ckpt")
    finally:
        os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o755
    # Every file alike: the weights once came owner-only (0600) beside 0644 config and processor files.
    assert {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir()} == {
        path.name: 0o644 for path in folder.iterdir()
    }
    assert "model.safetensors" in {path.name for path in folder.iterdir()}


def test_converted_models_need_their_own_processor(tmp_path):
    model = SinkViTModel(tiny_config("plain", converted_from="facebook/dinov2-small"))
    with pytest.raises(
        ValueError, match="image_processor: required for a model converted from 'facebook/dinov2-small'"
    ):
        save_checkpoint(model, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    folder = save_checkpoint(model, tmp_path / "ckpt", image_processor=default_image_processor(model.config))
    assert json.loads((folder / "config.json").read_text())["converted_from"] == "facebook/dinov2-small"
    # Converted from a model built in memory, only its class is known: the hint must not pass it as a Hub id.
    unnamed = SinkViTModel(tiny_config("plain", converted_from="Dinov2WithRegistersModel"))
    with pytest.raises(ValueError) as error:
        save_checkpoint(unnamed, tmp_path / "other")
    assert "AutoImageProcessor.from_pretrained(<the Hub id or folder of that Dinov2WithRegistersModel checkpoint>)" in (
        str(error.value)
    )
    assert "from_pretrained('Dinov2WithRegistersModel')" not in str(error.value)


def test_main_job_builds_saves_and_reloads(tmp_path):
    env = {k: v for k, v in os.environ.items()} | {"HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(
        [sys.executable, "-m", "sink_models", "--variant", "gated-headwise", "--out", str(tmp_path / "m")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "max |reloaded - original| logits: 0.00e+00" in result.stdout
    assert "tokens per image: 65 = CLS + 0 registers + 64 patches" in result.stdout
    assert SinkViTForImageClassification.from_pretrained(tmp_path / "m").config.attention_gate == "headwise"


def test_failed_save_leaves_the_old_folder_untouched(model, tmp_path):
    folder = save_checkpoint(model, tmp_path / "ckpt")
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}

    class BrokenProcessor:
        def save_pretrained(self, path):
            raise OSError("disk full")

    other = SinkViTForImageClassification(tiny_config("plain", num_labels=5))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(other, folder, image_processor=BrokenProcessor())
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    assert os.listdir(tmp_path) == ["ckpt"]


def test_overwriting_replaces_the_folder(model, tmp_path):
    save_checkpoint(model, tmp_path / "ckpt")
    other = SinkViTForImageClassification(tiny_config("plain", num_labels=5))
    save_checkpoint(other, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["attention_gate"] == "none"
    assert os.listdir(tmp_path) == ["ckpt"]


def test_only_sink_vit_models_are_saved(tmp_path):
    with pytest.raises(TypeError, match="expected a SinkViT model, got Linear"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x")


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForImageClassification, pipeline

    folder, inputs = sys.argv[1], load_file(sys.argv[2])
    head = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    image = Image.fromarray(np.load(sys.argv[4]))
    predictions = pipeline("image-classification", model=folder, trust_remote_code=True, top_k=5)(image)
    save_file({"logits": head(inputs["x"]).logits.detach(), "tokens": base(inputs["x"]).last_hidden_state.detach()},
              sys.argv[3])
    print(json.dumps({"classes": [type(head).__name__, type(base).__name__], "predictions": predictions,
                      "imported_sink_models": any(m.startswith("sink_models") for m in sys.modules)}))
    """
)


def test_fresh_process_loads_with_trust_remote_code(model, tmp_path):
    folder = save_checkpoint(model, tmp_path / "ckpt")
    x = images(model.config)
    save_file({"x": x}, tmp_path / "inputs.safetensors")
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 28, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", pixels)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS,
            str(folder),
            str(tmp_path / "inputs.safetensors"),
            str(tmp_path / "outputs.safetensors"),
            str(tmp_path / "image.npy"),
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["classes"] == ["SinkViTForImageClassification", "SinkViTModel"]
    assert report["imported_sink_models"] is False
    assert (tmp_path / "hf_home" / "modules").is_dir()

    outputs = load_file(tmp_path / "outputs.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(outputs["logits"], model(x).logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(outputs["tokens"], model.sink_vit(x).last_hidden_state, atol=1e-6, rtol=0)

        # The pipeline: resize to 16 x 16 with the saved processor, softmax over the model's logits.
        pixel_values = default_image_processor(model.config)(Image.fromarray(pixels), return_tensors="pt")
        probs = model(pixel_values["pixel_values"]).logits.softmax(-1)[0]
    got = {p["label"]: p["score"] for p in report["predictions"]}
    assert got.keys() == {f"digit{i}" for i in range(5)}
    for i in range(5):
        assert got[f"digit{i}"] == pytest.approx(probs[i].item(), abs=1e-5)

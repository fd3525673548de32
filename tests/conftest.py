"""Shared fixtures: offline, a private HF_HOME, and the tiny configs every test builds on."""

import os
import socket
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub: its cache and remote-code modules go to a throwaway folder.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="sink-models-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from hub_server import HubServer  # noqa: E402
from huggingface_hub import constants  # noqa: E402
from huggingface_hub.utils import _detect_agent  # noqa: E402

from sink_models import VARIANTS, preset_config  # noqa: E402

TINY = {
    "image_size": 16,
    "patch_size": 4,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_labels": 5,
}

# Stock ViT / DINOv2 configs of the same tiny size.
STOCK_SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 16, "patch_size": 4}

# Every preset variant at a tiny size, plus the config switches the presets leave alone.
CONFIGS = {variant: {"variant": variant} for variant in VARIANTS} | {
    "plain-bare": {"variant": "plain", "layerscale_init": None, "qkv_bias": False, "proj_bias": False},
    "reg-mean": {"variant": "reg", "pooling": "mean"},
    "gated-headwise-clsmean": {"variant": "gated-headwise", "pooling": "cls+mean", "num_register_tokens": 2},
    "rect": {"variant": "gated-reg", "image_size": (16, 24), "patch_size": (4, 8)},
    "attention-only": {"variant": "gated-headwise", "intermediate_size": 0},
}


def tiny_config(name: str = "plain", **overrides):
    fields = dict(CONFIGS[name])
    variant = fields.pop("variant")
    # layerscale 0.5 instead of 1e-4 so the residual updates are large enough for comparisons to mean something.
    return preset_config(variant, "toy", **{**TINY, "layerscale_init": 0.5, **fields, **overrides})


def images(config, batch: int = 3, seed: int = 0, size=None) -> torch.Tensor:
    height, width = size or ((config.image_size,) * 2 if isinstance(config.image_size, int) else config.image_size)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.num_channels, height, width, generator=generator)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for accelerate's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_nested_close(x, y, rel: float, abs: float = 1e-9, where: str = "") -> None:
    """x == y for nested dicts / lists, floats to `rel` / `abs`; None, ints and strings exactly.

    pytest.approx on a mapping holding None raises a TypeError under pytest >= 9.2, so walk the values here."""
    if isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for key in x:
            assert_nested_close(x[key], y[key], rel, abs, f"{where}.{key}")
    elif isinstance(x, list | tuple):
        assert isinstance(y, list | tuple) and len(x) == len(y), where
        for i, (p, q) in enumerate(zip(x, y, strict=True)):
            assert_nested_close(p, q, rel, abs, f"{where}[{i}]")
    elif isinstance(x, float) or isinstance(y, float):
        assert isinstance(x, int | float) and isinstance(y, int | float), where
        assert y == pytest.approx(x, rel=rel, abs=abs), where
    else:
        assert x == y, where


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def hub(monkeypatch):
    # Every other test runs offline (above); these talk to a local Hub-compatible server only.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    # Once online, the client's user-agent code fetches an agent registry from constants.ENDPOINT, which is
    # huggingface.co in this process (HF_ENDPOINT is read at import): pin it empty so nothing leaves 127.0.0.1.
    monkeypatch.setattr(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY)
    with HubServer() as server:
        yield server


class Marker:
    """A pickle that, if ever unpickled, leaves a file behind."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "unpickled"))

"""`sink-models inspect` bounds every image before the work (issue 23, item 8): its pixels from its header before it
is decoded, and the pixels at every step of the image processor from the processor's settings before it runs; the
prediction equals what the processor makes."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import test_inspect
import transformers
from PIL import Image
from transformers import (
    BeitImageProcessorPil,
    BitImageProcessorPil,
    CLIPImageProcessorPil,
    ConvNextImageProcessorPil,
    DeiTImageProcessorPil,
    Siglip2ImageProcessorPil,
    SiglipImageProcessorPil,
    ViTImageProcessorPil,
)

from sink_models.errors import InputError
from sink_models.inspection import collect_images, main
from sink_models.inspection.images import MAX_PIXELS, processed_pixels

dino = test_inspect.dino  # the tiny DINOv2 folder with a DINOv2-style processor, once for this module

PROCESSORS = {
    "bit": BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 24, "width": 24}),
    "bit uncropped": BitImageProcessorPil(size={"shortest_edge": 40}, do_center_crop=False),
    "vit": ViTImageProcessorPil(size={"height": 30, "width": 20}),
    "vit unresized": ViTImageProcessorPil(do_resize=False),
    "vit max sides": ViTImageProcessorPil(size={"max_height": 30, "max_width": 20}),
    "clip longest edge": CLIPImageProcessorPil(size={"shortest_edge": 20, "longest_edge": 50}, do_center_crop=False),
    "siglip": SiglipImageProcessorPil(size={"height": 32, "width": 32}),
    "siglip2 naflex": Siglip2ImageProcessorPil(patch_size=4, max_num_patches=16),
    "beit": BeitImageProcessorPil(size={"height": 20, "width": 20}, crop_size={"height": 16, "width": 16}),
    "deit": DeiTImageProcessorPil(size={"height": 20, "width": 20}, crop_size={"height": 16, "width": 16}),
}


@pytest.mark.parametrize("name", list(PROCESSORS))
@pytest.mark.parametrize("size", [(10, 10), (13, 71), (200, 37), (64, 64)])
def test_the_predicted_pixels_are_those_the_processor_makes(name, size):
    processor = PROCESSORS[name]
    width, height = size
    made = processor(images=[Image.new("RGB", size)], return_tensors="np")["pixel_values"][0]
    # (channels, height, width), or NaFlex's (patches, patch * patch * channels)
    pixels = made.shape[0] * made.shape[1] // 3 if made.ndim == 2 else made.shape[1] * made.shape[2]
    largest, output = processed_pixels(processor, width, height)
    assert output == pixels
    assert largest >= max(width * height, pixels)


def test_a_processor_that_sizes_in_its_own_way_or_bad_settings_are_refused():
    with pytest.raises(InputError) as own:
        processed_pixels(ConvNextImageProcessorPil(), 10, 10)
    assert str(own.value) == (
        "images: the image processor ConvNextImageProcessorPil sizes images in its own way, which cannot be bounded "
        "before it runs; allowed: transformers' processors that resize by their settings (ViT, BiT, CLIP, SigLIP...)."
    )
    processor = ViTImageProcessorPil(size={"height": 20, "width": 20})
    for value in (-5, 2.5):
        processor.size.height = value
        with pytest.raises(InputError) as bad:
            processed_pixels(processor, 10, 10)
        assert str(bad.value) == f"images: the image processor's height is {value!r}; allowed: a positive integer."


def _inspect(model: Path, images: Path, capsys) -> tuple[int, str]:
    code = main([str(model), "--images", str(images), "--out", str(images.parent / "out")])
    return code, capsys.readouterr().err


def test_the_command_refuses_a_processor_resizing_past_the_bound_before_it_runs(dino, tmp_path, capsys, monkeypatch):
    model = tmp_path / "huge-resize"
    shutil.copytree(dino, model)
    ViTImageProcessorPil(size={"height": 9000, "width": 9000}).save_pretrained(model)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "images" / "a.png")
    monkeypatch.setattr(transformers.ViTImageProcessorPil, "__call__", _never)
    assert _inspect(model, tmp_path / "images", capsys) == (
        2,
        "sink-models inspect: images: the image processor makes 81.0 megapixels of a.png, over 64; allowed: a "
        "processor that resizes to a smaller size.\n",
    )
    assert not (tmp_path / "out").exists()


def _never(*args, **kwargs):
    raise AssertionError("the image processor ran")


def test_the_command_refuses_a_long_image_the_stock_processor_would_blow_up(dino, tmp_path, capsys, monkeypatch):
    """A 250,000 x 64 PNG (46 kB): DINOv2's resize to a shortest edge of 256 would make 256 megapixels of it."""
    model = tmp_path / "stock"
    shutil.copytree(dino, model)
    BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}).save_pretrained(model)
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((64, 250_000), dtype=np.uint8)).save(tmp_path / "images" / "long.png")
    monkeypatch.setattr(transformers.BitImageProcessorPil, "__call__", _never)
    assert _inspect(model, tmp_path / "images", capsys) == (
        2,
        "sink-models inspect: images: the image processor makes 256.0 megapixels of long.png, over 64; allowed: a "
        "processor that resizes to a smaller size.\n",
    )


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((9_000, 8_000), "images: big.png is 9,000 x 8,000 pixels, over 64 megapixels; allowed: smaller images."),
        ((100_000, 100_000), "images: big.png is over 64 megapixels; allowed: smaller images."),  # PIL's own refusal
    ],
)
def test_an_image_over_the_pixels_is_refused_from_its_header(size, message, tmp_path):
    (tmp_path / "big.png").write_bytes(_png_header(*size))  # no pixels to decode: a decode would fail, not refuse
    with pytest.raises(InputError) as refused:
        collect_images(tmp_path)
    assert str(refused.value) == message
    assert MAX_PIXELS == 64_000_000


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature and IHDR chunk (8-bit greyscale) with 8 bytes of pixel data that are no zlib stream: PIL reads
    its size, and decoding it fails."""
    import struct
    import zlib

    chunks = [b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0), b"IDAT" + bytes(8), b"IEND"]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk)) for chunk in chunks
    )

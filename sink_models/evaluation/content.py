"""Content or default sinks on canvas-digits (docs/science.md section 9): whether a patch sink sits on digit ink, and
the sinks of held-out canvases whose content is controlled (no digit; a second, unlabelled digit)."""

import numpy as np
from PIL import Image

from ..data import Canvas, canvas_dense, canvas_digits, ink_patches, parse_options
from ..diagnostics import SinkReport, diagnose
from ..diagnostics.capture import adapter_for
from ..vocabulary import CLASSES


def content_options(name: str, options: dict) -> dict:
    """The canvas options of a content set, from the model's own (same size, digit size and noise): `blank` keeps the
    held-out placements and noise and leaves the digit out (nothing to find); `cluttered` adds one more distractor,
    an unlabelled digit of the labelled digit's size (its draws come first, so placements and noise change)."""
    if name == "blank":
        return options | {"blank": True}
    return options | {
        "blank": False,
        "distractors": options.get("distractors", 0) + 1,
        "distractor_size": options.get("digit_size", Canvas.digit_size),
    }


CONTENT_SETS = ("blank", "cluttered")


def ink_block(report: SinkReport, options: dict, patch_size: tuple[int, int]) -> dict:
    """The share of patch-sink events whose sink patch holds ink (of the labelled digit or a distractor), overall and
    by class, against the chance rate (the share of patches that hold ink), for a report on the held-out canvases
    of `options` in their order. Where the processor resized the canvases, the label maps follow (nearest)."""
    _, maps, _ = canvas_dense(Canvas(**options), "eval", limit=report.summary["images"])
    (ph, pw), side = patch_size, maps.shape[-1]
    rows, cols = (report.attention or {}).get("grid") or (side // ph, side // pw)
    if maps.shape[-2:] != (rows * ph, cols * pw):
        size = (cols * pw, rows * ph)
        maps = np.stack([np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in maps])
    ink = ink_patches(maps, patch_size).reshape(len(maps), -1)
    prefix = report.model["num_prefix_tokens"]

    def share(events: list[dict]) -> dict:
        on = sum(bool(ink[e["image"], e["sink"] - prefix]) for e in events)
        return {"patch_events": len(events), "on_ink": on / len(events) if events else None}

    patch_events = [e for e in report.events if e["token_type"] == "patch"]
    return {
        "ink_patches_per_image": float(ink.sum(1).mean()),
        "chance": float(ink.mean()),
        **share(patch_events),
        "by_class": {c: share([e for e in patch_events if e["class"] == c]) for c in CLASSES},
    }


def content_sets_block(model, processor_loader, recorded_options: str, max_images: int | None, grid, accelerator):
    """Per content set: its options, the sinks per image by class and token type, with and without block 0, per
    layer (with the CLS share), the grid's counts when `grid` is given, and the ink attribution of its patch sinks.
    `processor_loader(images)` gives this process's loader over a dataset's rows (as the evaluation's own)."""
    blocks = {}
    for name in CONTENT_SETS:
        options = content_options(name, parse_options(recorded_options))
        images = canvas_digits(Canvas(**options)).eval
        if max_images is not None:
            images = images.select(range(min(max_images, len(images))))
        report = diagnose(model, processor_loader(images), accelerator=accelerator, grid=grid)
        summary = report.summary
        keep = ("images", "sinks_per_image", *(f"{c}_per_image" for c in CLASSES), "sink_share", "per_image_by_token",
                "excluding_first_layer", "sensitivity")  # fmt: skip
        blocks[name] = {
            "options": options,
            "sinks": {key: summary[key] for key in keep if key in summary},
            "layers": [
                {key: layer[key] for key in ("layer", "events", "sinks_per_image", "cls", "register", "patch")}
                for layer in report.layers
            ],
            "ink": ink_block(report, options, adapter_for(model).patch_size),
        }
    return blocks

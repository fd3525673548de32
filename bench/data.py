"""The training input pipeline against the training step it feeds, side by side.

    python bench/data.py                      # 256 ImageNet-like JPEGs, 0 / 1 / 2 workers, a ViT-Tiny-sized step
    python bench/data.py --gpu-rate 3000      # how many workers a GPU training at 3,000 images/s would need

Locally generated 500 x 375 JPEGs (ImageNet's typical size, smooth noise so that they compress like photos) in an
imagefolder, decoded, random-resized-cropped to 224 (area 8-100%, ImageNet's augmentation), flipped and processed by
the training Collate of sink_models.data, through the training DataLoader's options (sink_models.training's
loader_options) with 0, 1 and 2 workers; a pass over the set, starting the workers included. Beside it, the
images/s of one training step (forward, backward, AdamW) of a SinkViT at 224 / 16 with 4 registers, on this machine.
Medians of rounds.
"""

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sink_models import SinkViTForImageClassification, preset_config
from sink_models.checkpoint import default_image_processor
from sink_models.data import Augmentation, Collate, Indexed, load_image_data, loader_options


def make_images(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` 500 x 375 JPEGs in two class folders: upsampled noise, smooth like a photo."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC)
        path = folder / "train" / f"class{index % 2}" / f"{index}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
    return folder


def pipeline_rate(dataset, collate, batch: int, workers: int) -> float:
    """Images/s of one pass over `dataset` through the training loader with `workers` workers, their start (once
    an epoch: training workers are not persistent) included."""
    loader = torch.utils.data.DataLoader(
        Indexed(dataset), batch, shuffle=True, collate_fn=collate, drop_last=True,
        generator=torch.Generator().manual_seed(0), **loader_options(workers, 2, persistent=False),
    )  # fmt: skip
    started, images = time.perf_counter(), 0
    for item in loader:
        images += len(item["pixel_values"])
    return images / (time.perf_counter() - started)


def step_rate(size: str, batch: int, rounds: int) -> float:
    """Images/s of a training step of the `reg` SinkViT of `size` at 224."""
    torch.manual_seed(0)
    config = preset_config("reg", size, num_labels=1000, image_size=224, patch_size=16)
    model = SinkViTForImageClassification(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    times = []
    for _ in range(rounds + 1):
        started = time.perf_counter()
        model(pixel_values=x, labels=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times[1:])  # the first step allocates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", default="tiny", help="the SinkViT preset size of the training step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gpu-rate", type=float, default=3000.0, help="a GPU's training images/s to feed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = load_image_data(str(make_images(Path(folder), args.images)), eval_split="train")
        processor = default_image_processor(preset_config("reg", args.size, image_size=224, patch_size=16))
        collate = Collate(processor, augmentation=Augmentation(scale=(0.08, 1.0)))
        rates = {}
        for workers in args.workers:
            runs = [pipeline_rate(data.train, collate, args.batch, workers) for _ in range(args.rounds)]
            rates[workers] = statistics.median(runs)
    step = step_rate(args.size, args.batch, args.rounds)
    print(f"{args.images} JPEGs of 500 x 375, batch {args.batch}, {torch.get_num_threads()} threads")
    print(f"{'workers':>8} {'images/s':>9} {'x 0 workers':>12} {'x training step':>16}")
    for workers, rate in rates.items():
        print(f"{workers:>8} {rate:9.1f} {rate / rates[args.workers[0]]:12.2f} {rate / step:16.2f}")
    print(f"training step ({args.size} SinkViT, reg, 224): {step:.1f} images/s")
    per_worker = max(rate / max(workers, 1) for workers, rate in rates.items())
    needed = math.ceil(args.gpu_rate / per_worker)
    print(f"a GPU training at {args.gpu_rate:.0f} images/s needs about {needed} workers")
    print(f"  ({per_worker:.0f} images/s each on this machine's cores; a worker adds speed only on a free core)")
    print(json.dumps({"rates": rates, "step": step, "per_worker": per_worker, "workers_needed": needed}))


if __name__ == "__main__":
    main()

"""Training throughput of train/run.py's loop (sink_models.training.train) against a bare PyTorch loop.

    python bench/train.py                 # toy gated-reg on digits, batch 64, 60 steps per run, 5 runs each

Both train the same model on the same data (the same DataLoader and collate, AdamW, warm-up + cosine, gradient
clipping) in the same process, alternating. The figure compared is images/s over the second half of each run
(the first half warms up): for train() it is the `images_per_s` of its last metrics line, which covers the steps
since the previous line. Target: accelerate's overhead <= 10% (ratio >= 0.9).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import get_cosine_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).parents[1]))

from sink_models import SinkViTForImageClassification, preset_config  # noqa: E402
from sink_models.checkpoint import default_image_processor  # noqa: E402
from sink_models.data import Augmentation, Collate, Indexed, digits  # noqa: E402
from sink_models.training import DataArguments, ModelArguments, TrainArguments, parameter_groups, train  # noqa: E402


def bare_loop(variant: str, steps: int, batch: int, data) -> float:
    """Images/s over the second half of `steps` plain PyTorch steps."""
    torch.manual_seed(0)
    config = preset_config(variant, "toy", id2label=dict(enumerate(data.labels)))
    model = SinkViTForImageClassification(config).train()
    collate = Collate(default_image_processor(config), augmentation=Augmentation(flip=False))
    loader = torch.utils.data.DataLoader(
        Indexed(data.train), batch, shuffle=True, collate_fn=collate, drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=2e-3)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 10, steps)
    done, start = 0, None
    while done < steps:
        for inputs in loader:
            if done == steps // 2:
                start = time.perf_counter()
            loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done += 1
            if done == steps:
                break
    return (steps - steps // 2) * batch / (time.perf_counter() - start)


def accelerate_loop(variant: str, steps: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        train(
            ModelArguments(variant=variant, size="toy"),
            DataArguments(dataset="digits", flip=False),
            TrainArguments(
                output_dir=folder, max_steps=steps, per_device_batch_size=batch, logging_steps=steps // 2,
                learning_rate=2e-3, warmup_steps=10,
            ),
        )  # fmt: skip
        last = (Path(folder) / "metrics.jsonl").read_text().splitlines()[-1]
        return json.loads(last)["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="gated-reg")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    data = digits()
    bare, accelerated = [], []
    for _ in range(args.runs):
        bare.append(bare_loop(args.variant, args.steps, args.batch, data))
        accelerated.append(accelerate_loop(args.variant, args.steps, args.batch))
    ratios = [a / b for a, b in zip(accelerated, bare, strict=True)]
    ratio = statistics.median(ratios)
    print(
        f"toy {args.variant} on digits, batch {args.batch}, {args.steps} steps per run (second half timed), "
        f"{args.runs} runs each, alternating, {torch.get_num_threads()} threads"
    )
    print(f"bare PyTorch loop : {statistics.median(bare):8.1f} images/s  (runs: {', '.join(f'{v:.0f}' for v in bare)})")
    print(
        f"train() on accelerate: {statistics.median(accelerated):8.1f} images/s  "
        f"(runs: {', '.join(f'{v:.0f}' for v in accelerated)})"
    )
    print(f"ratio train() / bare: {ratio:.3f} (per-run ratios {', '.join(f'{r:.3f}' for r in ratios)}); "
          f"overhead {100 * (1 - ratio):+.1f}% (target <= 10%: {'met' if ratio >= 0.9 else 'MISSED'})")  # fmt: skip


if __name__ == "__main__":
    main()

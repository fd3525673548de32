"""Cost of a full intervention pass against one plain forward, side by side.

    python bench/interventions.py                # ViT-Tiny-sized SinkViT (4 registers), 8 images at 224, 4 heads
    python bench/interventions.py --size toy     # a quick look

A pass edits each of `--heads` heads with the six paper edits, every image counted as a sink event (the worst case:
the events of a real model are a subset). It runs one recording forward, a no-op check forward per head and one
forward per (head, edit): 1 + heads x 7 forwards, plus the per-head attention maps rebuilt for the edits and
the float64 checks. Printed: seconds, the pass as a multiple of one sdpa forward, and that multiple per edited
forward (1.0 would be the forwards alone). The same for a stock DINOv3 ViT-S/16 (random weights). Times are medians
over interleaved rounds.
"""

import argparse
import json
import statistics
import time

import torch

from sink_models import SinkViTForImageClassification, preset_config
from sink_models.diagnostics import Thresholds
from sink_models.interventions import DEFAULT_EDITS, intervene
from sink_models.presets import dinov3_config


def models(size: str) -> dict:
    torch.manual_seed(0)
    preset = preset_config("reg", size, num_labels=10, layerscale_init=1.0)
    sink_vit = SinkViTForImageClassification(preset).eval()
    from transformers import DINOv3ViTModel

    dinov3 = DINOv3ViTModel(dinov3_config("small" if size == "tiny" else size)).eval()
    return {"SinkViT": sink_vit, "DINOv3": dinov3}


def heads_of(model, count: int) -> list[tuple[int, int]]:
    """`count` heads spread over the layers (the deepest ones last), head index cycling."""
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    return [(layers * (i + 1) // (count + 1), i % heads) for i in range(count)]


def bench(name: str, model, args) -> dict:
    size = model.config.image_size
    x = torch.randn(args.batch, 3, size, size)
    heads = heads_of(model, args.heads)
    every = Thresholds(event=0.0)

    def forward():
        with torch.no_grad():
            model(pixel_values=x)

    def full_pass():
        return intervene(model, [x], heads=heads, edits=DEFAULT_EDITS, thresholds=every)

    report = full_pass()
    forward()
    times = {"forward": [], "pass": []}
    for round_index in range(args.reps):
        order = ("forward", "pass") if round_index % 2 == 0 else ("pass", "forward")
        for method in order:
            started = time.perf_counter()
            (forward if method == "forward" else full_pass)()
            times[method].append(time.perf_counter() - started)
    ratio = statistics.median(p / f for p, f in zip(times["pass"], times["forward"], strict=True))
    forwards = 1 + len(heads) * (len(DEFAULT_EDITS) + 1)
    print(
        f"{name:8} forward {statistics.median(times['forward']):.3f} s, pass {statistics.median(times['pass']):.3f} s: "
        f"{ratio:.1f}x one forward; {forwards} forwards, so {ratio / forwards:.2f}x per edited forward "
        f"({len(report.rows)} rows, local identity {report.checks['local_identity_max']:.1e}, "
        f"no-op {report.checks['noop_max']:.1e})"
    )
    return {"ratio": ratio, "forwards": forwards, "per_forward": ratio / forwards, "rows": len(report.rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.size}: {args.batch} images, {args.heads} heads x {len(DEFAULT_EDITS)} edits, "
          f"{torch.get_num_threads()} threads, {args.reps} rounds")  # fmt: skip
    figures = {name: bench(name, model, args) for name, model in models(args.size).items()}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""Throughput of SinkViT variants against transformers' ViT of the same size, measured side by side.

    python bench/model.py                      # ViT-Tiny/16 at 224, batch 8 (the README's figures)
    python bench/model.py --size toy --reps 3  # a quick look

Every model runs on the same inputs with sdpa. Each round times every model (the best of two calls), in an order
that rotates between rounds; a ratio is taken within a round, so that load which comes and goes on a shared
machine hits both sides alike, and the figure printed is the median of those per-round ratios. Ratios are
throughput against transformers' ViTForImageClassification (ViTModel plus a linear head; higher is faster); gate
costs are against SinkViT plain. GFLOP/s is set against a large fp32 torch matmul measured in the same run.
"""

import argparse
import statistics
import time

import torch
from transformers import ViTConfig, ViTForImageClassification

from sink_models import SinkViTForImageClassification, preset_config

VARIANTS = ("plain", "gated-headwise", "gated", "reg", "gated-reg")


def forward_flops(config, tokens: int, patches: int) -> float:
    """Multiply-adds x 2 of one image's forward pass (matmuls only: they are >95% of the work)."""
    d, f, h = config.hidden_size, config.intermediate_size, config.num_attention_heads
    channels, (ph, pw) = config.num_channels, _pair(config.patch_size)
    gate = {"none": 0, "headwise": h, "elementwise": d}[getattr(config, "attention_gate", "none")]
    per_layer = tokens * (4 * d * d + 2 * d * f + d * gate) + 2 * tokens * tokens * d
    return 2.0 * (patches * channels * ph * pw * d + config.num_hidden_layers * per_layer)


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def matmul_gflops(reps: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def build_models(size: str, num_labels: int) -> dict:
    reference = preset_config("plain", size, num_labels=num_labels)
    vit_config = ViTConfig(
        image_size=reference.image_size,
        patch_size=reference.patch_size,
        hidden_size=reference.hidden_size,
        num_hidden_layers=reference.num_hidden_layers,
        num_attention_heads=reference.num_attention_heads,
        intermediate_size=reference.intermediate_size,
        layer_norm_eps=reference.layer_norm_eps,
        num_labels=num_labels,
    )
    models = {"transformers ViT": ViTForImageClassification(vit_config)}
    models["SinkViT plain, no LayerScale"] = SinkViTForImageClassification(
        preset_config("plain", size, num_labels=num_labels, layerscale_init=None)
    )
    for variant in VARIANTS:
        models[f"SinkViT {variant}"] = SinkViTForImageClassification(
            preset_config(variant, size, num_labels=num_labels)
        )
    for model in models.values():
        model.set_attn_implementation("sdpa")
    return models


def measure(models: dict, step, reps: int, calls: int = 2) -> dict[str, list[float]]:
    """Seconds of `step(name, model)` per model and round (best of `calls`), over `reps` interleaved rounds."""
    names = list(models)
    for name in names:
        step(name, models[name])
    times = {name: [] for name in names}
    for round_index in range(reps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            best = float("inf")
            for _ in range(calls):
                start = time.perf_counter()
                step(name, models[name])
                best = min(best, time.perf_counter() - start)
            times[name].append(best)
    return times


def speedup(times: dict[str, list[float]], name: str, against: str) -> float:
    """Median over rounds of time(against) / time(name): above 1, `name` is faster."""
    return statistics.median(a / b for a, b in zip(times[against], times[name], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="preset size (toy, tiny, small, base, large)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=11)
    args = parser.parse_args()
    torch.manual_seed(0)

    models = build_models(args.size, num_labels=10)
    config = next(iter(models.values())).config
    height, width = _pair(config.image_size)
    x = torch.randn(args.batch, config.num_channels, height, width)
    labels = torch.randint(0, 10, (args.batch,))
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}

    def forward(name, model):
        model.eval()
        with torch.inference_mode():
            model(x)

    def train_step(name, model):
        model.train()
        optimizers[name].zero_grad(set_to_none=True)
        model(x, labels=labels).loss.backward()
        optimizers[name].step()

    peak = matmul_gflops(args.reps)
    forward_times = measure(models, forward, args.reps)
    train_times = measure(models, train_step, args.reps)
    peak = max(peak, matmul_gflops(args.reps))

    base, plain = "transformers ViT", "SinkViT plain"
    patches = (height // _pair(config.patch_size)[0]) * (width // _pair(config.patch_size)[1])
    print(
        f"{args.size}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} "
        f"heads, {height}x{width}/{_pair(config.patch_size)[0]}, batch {args.batch}, sdpa, "
        f"{torch.get_num_threads()} threads, {args.reps} rounds; fp32 matmul peak {peak:.1f} GFLOP/s"
    )
    columns = ("fwd img/s", "vs ViT", "train img/s", "vs ViT", "GFLOP/s", "% peak")
    print(f"{'model':30}", " ".join(f"{c:>{w}}" for c, w in zip(columns, (10, 7, 11, 7, 8, 6), strict=True)))
    for name, model in models.items():
        forward_time, train_time = statistics.median(forward_times[name]), statistics.median(train_times[name])
        tokens = 1 + getattr(model.config, "num_register_tokens", 0) + patches
        gflops = forward_flops(model.config, tokens, patches) * args.batch / forward_time / 1e9
        print(
            f"{name:30} {args.batch / forward_time:10.1f} {speedup(forward_times, name, base):7.3f} "
            f"{args.batch / train_time:11.1f} {speedup(train_times, name, base):7.3f} "
            f"{gflops:8.1f} {100 * gflops / peak:5.1f}%"
        )
    print("targets (median per-round ratios):")
    for label, times in (("forward", forward_times), ("train", train_times)):
        ratio = speedup(times, plain, base)
        headwise = 1 / speedup(times, "SinkViT gated-headwise", plain) - 1
        elementwise = 1 / speedup(times, "SinkViT gated", plain) - 1
        print(
            f"  {label:7}: plain vs ViT {ratio:.3f} (target >= 0.95: {'met' if ratio >= 0.95 else 'MISSED'}); "
            f"headwise gate cost {100 * headwise:+.1f}% (<= 5%: {'met' if headwise <= 0.05 else 'MISSED'}); "
            f"elementwise gate cost {100 * elementwise:+.1f}% (<= 10%: {'met' if elementwise <= 0.10 else 'MISSED'})"
        )


if __name__ == "__main__":
    main()

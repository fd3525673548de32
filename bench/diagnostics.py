"""Cost of `diagnose` against a plain forward and against the paper's own procedure, side by side.

    python bench/diagnostics.py                 # ViT-Tiny-sized SinkViT with 4 registers, 8 images at 224
    python bench/diagnostics.py --size toy      # a quick look

A third case runs a stock transformers DINOv3 ViT-S/16 (384 wide, 12 layers, 6 heads, 4 registers, RoPE; random
weights) through the same capture, against its own sdpa forward (at --size toy, a DINOv3 of the toy preset's size).

Two cases: the random model, which has no sink events, and the same model with one planted sink head per layer
(about 12 sink events per image at ViT-Tiny size, NOP and broadcast, on CLS and registers), where the eigenvalue
problems of the events run. In each case, on one model and the same images: (1) a plain sdpa forward, (2) an eager
forward with output_attentions=True, (3) the paper's procedure as its code does it: the explicit attention of every
layer and head, the output-projected values u_j of every head, U = A u, and a batched float64 eigvalsh of the N x N
Gram matrix U U^T, (4) `diagnose` (stable ranks are computed for sink events, where they are reported), and (5)
`diagnose` with every head of every image counted as an event, its worst case. Times are medians over interleaved
rounds (the order rotates); ratios are taken within a round. Peak memory is measured in a fresh process per method,
on a second run: the rise of the peak resident set above the level before it. The script also checks that (3)
agrees to 1e-4 with (5) on every (image, layer, head) and with (4) on every sink event.
"""

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from sink_models import SinkViTForImageClassification, preset_config
from sink_models.diagnostics import Thresholds, diagnose
from sink_models.presets import dinov3_config

METHODS = ("sdpa forward", "eager forward + attentions", "paper procedure", "diagnose", "diagnose, all events")
STOCK_METHODS = tuple(method for method in METHODS if method != "paper procedure")


def setup(size: str, batch: int, sinks: bool = False, family: str = "sink_vit"):
    torch.manual_seed(0)
    if family == "dinov3":
        return setup_dinov3(size, batch)
    # LayerScale 1.0 rather than the preset's 1e-4: the residual updates then carry real weight.
    model = SinkViTForImageClassification(preset_config("reg", size, num_labels=10, layerscale_init=1.0)).eval()
    config = model.config
    x = torch.randn(batch, config.num_channels, config.image_size, config.image_size)
    if sinks:
        plant_sinks(model)
    return model, x


def setup_dinov3(size: str, batch: int):
    """A random DINOv3 ViT-S/16 with 4 registers (or one of the preset's size for `size` toy), and images."""
    from transformers import DINOv3ViTModel

    config = dinov3_config("small" if size == "tiny" else size)
    model = DINOv3ViTModel(config).eval()
    return model, torch.randn(batch, 3, config.image_size, config.image_size)


def plant_sinks(model, marker: float = 1000.0, logit: float = 12.0) -> None:
    """Make head (l mod heads) of every layer l a sink head: all its queries attend (~0.99) to prefix token
    (l mod prefix tokens), CLS or a register, whose value vanishes (NOP) in even layers and is large (broadcast) in
    odd ones.

    Prefix token t carries `marker` in channel t of the residual stream, which no layer's update comes near, so
    after any block's LayerNorm it is ~sqrt(C) e_t, whatever the image. The sink head's keys read channel t alone
    and its queries are near-constant (bias 1), so that token's score is ~`logit` above the others' (~N(0, 1)).
    """
    config = model.config
    heads, width = config.num_attention_heads, config.hidden_size
    dh, prefix = width // heads, config.num_prefix_tokens
    strength = logit / (dh * width) ** 0.5  # score = dh**-0.5 * dh * strength * sqrt(C)
    embeddings = model.sink_vit.embeddings
    with torch.no_grad():
        embeddings.cls_token[0, 0, 0] += marker
        for register in range(config.num_register_tokens):
            embeddings.register_tokens[0, register, 1 + register] += marker
        for layer, block in enumerate(model.sink_vit.layers):
            attention, target = block.attention, layer % prefix
            rows = slice(layer % heads * dh, (layer % heads + 1) * dh)
            attention.q_proj.bias[rows] = 1.0
            attention.k_proj.weight[rows] = 0.0
            attention.k_proj.weight[rows, target] = strength
            attention.k_proj.bias[rows] = 0.0
            attention.v_proj.bias[rows] = 0.0
            values = attention.v_proj.weight[rows]  # a view: edited in place
            if layer % 2 == 0:  # NOP: values blind to channel t and to the mean, which make up the sink's normed token
                basis = torch.linalg.qr(torch.stack([torch.eye(width)[target], torch.ones(width)], dim=1)).Q
                values -= values @ basis @ basis.T
            else:  # broadcast: channel t, and so the sink, drives the values
                values[:, target] = torch.randn(dh)


def paper_procedure(model, x) -> dict:
    """Per (image, layer, head): sink, ratio_out and stable rank, the straightforward way (N x N everywhere)."""
    values, hooks = {}, []
    for index, block in enumerate(model.sink_vit.layers):
        hooks.append(block.attention.v_proj.register_forward_hook(lambda m, a, o, i=index: values.__setitem__(i, o)))
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(x, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
        for hook in hooks:
            hook.remove()
    heads = model.config.num_attention_heads
    results = {}
    with torch.no_grad():
        for layer, block in enumerate(model.sink_vit.layers):
            a = attentions[layer].double()  # B, H, N, N
            v = values[layer].double().unflatten(-1, (heads, -1))  # B, N, H, d_h
            w = block.attention.o_proj.weight.double().unflatten(-1, (heads, -1))  # C, H, d_h
            u = torch.einsum("bnhd,chd->bhnc", v, w) * block.layer_scale1.lambda1.double()  # B, H, N, C
            update = a @ u  # U = A u
            eigenvalues = torch.linalg.eigvalsh(update @ update.transpose(-1, -2))  # B, H, N
            stable_rank = eigenvalues.clamp_min(0).sum(-1) / eigenvalues[..., -1]
            sink = a.mean(2).argmax(-1)
            norms = u.norm(dim=-1)
            at_sink = norms.gather(-1, sink[..., None]).squeeze(-1)
            ratio_out = at_sink / ((norms.sum(-1) - at_sink) / (norms.shape[-1] - 1))
            for image in range(x.shape[0]):
                for head in range(heads):
                    results[image, layer, head] = (
                        int(sink[image, head]),
                        float(ratio_out[image, head]),
                        float(stable_rank[image, head]),
                    )
    return results


def run(method: str, model, x):
    if method == "sdpa forward":
        with torch.no_grad():
            return model(x)
    if method == "eager forward + attentions":
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                return model(x, output_attentions=True)
        finally:
            model.set_attn_implementation("sdpa")
    if method == "paper procedure":
        return paper_procedure(model, x)
    if method == "diagnose":
        return diagnose(model, [x])
    # Worst case: every (image, layer, head) an event, so every stable rank is computed and every record kept.
    return diagnose(model, [x], thresholds=Thresholds(event=0.0))


def resident_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in KiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measured_peak(method: str, model, x) -> float:
    """MiB the resident set peaks above its level before one run of `method` (Linux)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed memory back, so that `before` is what is live
    before = resident_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")  # resets the peak (VmHWM) to the current level
    run(method, model, x)
    return (resident_kib("VmHWM") - before) / 1024


def peak_memory(size: str, batch: int, sinks: bool, method: str, family: str = "sink_vit", runs: int = 5) -> float:
    """Median over `runs` of `measured_peak`, in a fresh process, after one unmeasured run (one-time costs).

    Large blocks are mmapped (MALLOC_MMAP_THRESHOLD_), so that freed memory leaves the resident set at once.
    """
    code = (
        "import statistics, sys; sys.path.insert(0, 'bench'); import diagnostics as d; "
        f"model, x = d.setup({size!r}, {batch}, {sinks}, {family!r}); d.run({method!r}, model, x); "
        f"print(statistics.median(d.measured_peak({method!r}, model, x) for _ in range({runs})))"
    )
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def agreement(model, x) -> tuple[int, int, float]:
    """The largest relative difference from the paper procedure over every (image, layer, head) record of `diagnose`
    with every head counted as an event and over every sink event of `diagnose` as timed, and the two counts."""
    reference = paper_procedure(model, x)
    every = diagnose(model, [x], thresholds=Thresholds(event=0.0)).events
    events = diagnose(model, [x]).events
    worst = 0.0
    for event in every + events:
        sink, ratio_out, stable_rank = reference[event["image"], event["layer"], event["head"]]
        if sink != event["sink"]:
            return len(every), len(events), float("inf")
        for got, want in ((event["ratio_out"], ratio_out), (event["stable_rank"], stable_rank)):
            worst = max(worst, abs(got - want) / abs(want))
    return len(every), len(events), worst


def layer_maps(config, batch: int) -> tuple[int, float]:
    """Tokens per image, and the MiB of one layer's attention maps (float32) for `batch` images."""
    image, patch = config.image_size, config.patch_size
    tokens = 1 + config.num_register_tokens + (image // patch) ** 2
    return tokens, batch * config.num_attention_heads * tokens**2 * 4 / 2**20


def bench_case(args, sinks: bool, family: str = "sink_vit") -> dict:
    """Time, measure and check one case; print its table and targets; return its figures."""
    model, x = setup(args.size, args.batch, sinks, family)
    methods = METHODS if family == "sink_vit" else STOCK_METHODS
    summary = diagnose(model, [x]).summary
    for method in methods:
        run(method, model, x)
    times = {method: [] for method in methods}
    for round_index in range(args.reps):
        shift = round_index % len(methods)
        for method in methods[shift:] + methods[:shift]:
            start = time.perf_counter()
            run(method, model, x)
            times[method].append(time.perf_counter() - start)
    memory = {method: peak_memory(args.size, args.batch, sinks, method, family) for method in methods}

    one_layer = layer_maps(model.config, args.batch)[1]
    case = "planted sinks" if sinks else "no sinks (random model)"
    if family == "dinov3":
        config = model.config
        case = f"DINOv3 ({config.hidden_size} wide, {config.num_hidden_layers} layers, random)"
    print(
        f"\n{case}: {summary['sinks_per_image']:.2f} sink events "
        f"per image ({summary['nop_per_image']:.2f} NOP, {summary['broadcast_per_image']:.2f} broadcast, "
        f"{summary['other_per_image']:.2f} other; on CLS {summary['sink_share']['cls']:.0%}, registers "
        f"{summary['sink_share']['register']:.0%})"
    )
    print(f"{'method':28} {'seconds':>8} {'x sdpa':>7} {'peak MiB':>9} {'MiB over sdpa':>14}")
    sdpa = "sdpa forward"
    for method in methods:
        ratio = statistics.median(t / s for t, s in zip(times[method], times[sdpa], strict=True))
        print(
            f"{method:28} {statistics.median(times[method]):8.3f} {ratio:7.2f} {memory[method]:9.1f} "
            f"{memory[method] - memory[sdpa]:14.1f}"
        )
    cost = statistics.median(d / s for d, s in zip(times["diagnose"], times[sdpa], strict=True))
    extra = memory["diagnose"] - memory[sdpa]
    print("targets:")
    print(f"  diagnose vs sdpa forward: {cost:.2f}x the time (<= 2x: {'met' if cost <= 2 else 'MISSED'})")
    print(
        f"  diagnose memory over sdpa forward: {extra:.1f} MiB (<= one layer's maps, {one_layer:.1f} MiB: "
        f"{'met' if extra <= one_layer else 'MISSED'})"
    )
    figures = {"sinks_per_image": summary["sinks_per_image"], "cost": cost, "extra_mib": extra}
    if family != "sink_vit":  # exactness on stock families is tested against their eager attention weights
        return figures
    speedup = statistics.median(p / d for p, d in zip(times["paper procedure"], times["diagnose"], strict=True))
    records, events, worst = agreement(model, x)
    print(f"  diagnose vs paper procedure: {speedup:.2f}x faster (>= 3x: {'met' if speedup >= 3 else 'MISSED'})")
    print(
        f"  agreement with the paper procedure on {records} (image, layer, head) records and {events} sink events: "
        f"largest relative difference {worst:.1e} (<= 1e-4: {'met' if worst <= 1e-4 else 'MISSED'})"
    )
    return figures | {"speedup": speedup, "worst": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=11)
    args = parser.parse_args()
    config = setup(args.size, 1)[0].config
    tokens, one_layer = layer_maps(config, args.batch)
    print(
        f"{args.size}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} "
        f"heads, {config.num_register_tokens} registers, {tokens} tokens, {args.batch} images, "
        f"{torch.get_num_threads()} threads, {args.reps} rounds; one layer's attention maps: {one_layer:.1f} MiB"
    )
    figures = {case: bench_case(args, sinks) for case, sinks in (("no sinks", False), ("sinks", True))}
    figures["dinov3"] = bench_case(args, False, "dinov3")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

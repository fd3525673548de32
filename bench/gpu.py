"""Throughput of SinkViT variants against transformers' ViT on one CUDA GPU, side by side.

    python bench/gpu.py               # CUDA: ViT-S/16 and ViT-B/16 at 224, batch 256, within --budget-s 270
    python bench/gpu.py --tiny        # CPU (or GPU) smoke run: the toy preset, batch 4, a few seconds

Cases, in this order (the budget drops the later ones first): for each of not compiled, then compiled, and each
attention backend (sdpa, flash_attention_2, flex_attention; one that `set_attn_implementation` refuses is skipped
with its reason), at each size: the forward and the training step of SinkViT plain, gated, reg and gated-reg and of
transformers' ViTForImageClassification of the same dims (the peer). After the uncompiled sdpa cases, `diagnose` on
--diagnose-batch images against the forward on the same images, per model.

Precision: inference (forward, diagnose) runs bf16 weights on bf16 inputs; a training step runs fp32 master weights
under bf16 autocast, with AdamW. Compiled means `torch.compile` of every transformer block (--compile-scope blocks,
regional compilation, PyTorch's recipe against cold-start compile time: the blocks hold nearly all the work, and a
model's identical blocks reuse one compiled graph) or of the whole model (--compile-scope model); compiling happens
in the warm-up, outside the timed part.

Each case builds its five models, warms each up, then runs interleaved rounds (the order rotates): a round times
--steps calls of each model between `torch.cuda.synchronize()` calls. Images/s is from the median round; the ratio
against the peer (higher is faster) is the median of per-round ratios. Peak MiB: `torch.cuda.max_memory_allocated`
over one extra untimed call, reset before it, less what the other models and the inputs hold: the model's own
weights, gradients, optimizer state and activations. A case starts only if the time spent plus what it should take
(see `expected`) fits in --budget-s; the skipped cases are listed. The last line is JSON with every figure.
"""

import argparse
import copy
import functools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from transformers import ViTConfig, ViTForImageClassification

from sink_models import SinkViTForImageClassification, preset_config
from sink_models.diagnostics import diagnose

VARIANTS = ("plain", "gated", "reg", "gated-reg")
PEER = "transformers ViT"
BACKENDS = ("sdpa", "flash_attention_2", "flex_attention")
NUM_LABELS = 1000


@dataclass(frozen=True)
class Case:
    size: str
    backend: str
    compiled: bool
    mode: str  # forward, train or diagnose

    @property
    def label(self) -> str:
        return f"{self.size} {self.backend} {'compiled' if self.compiled else 'eager'} {self.mode}"


class Unavailable(Exception):
    """An attention backend that this machine cannot run (set_attn_implementation raised)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy preset, batch 4, few steps, no compile: CPU is fine")
    parser.add_argument("--sizes", nargs="+", help="preset sizes (default: small base; --tiny: toy)")
    parser.add_argument("--backends", nargs="+", help="attention backends (default: all three; --tiny: no flex)")
    parser.add_argument("--compile", choices=("no", "yes", "both"), help="default: both; --tiny: no")
    parser.add_argument("--compile-scope", choices=("blocks", "model"), default="blocks")
    parser.add_argument("--batch", type=int, help="images per step (default 256; --tiny: 4)")
    parser.add_argument("--diagnose-batch", type=int, help="images for diagnose vs forward (default 64; --tiny: 4)")
    parser.add_argument("--reps", type=int, help="interleaved rounds (default 5; --tiny: 2)")
    parser.add_argument("--steps", type=int, help="calls per model and round (default 5; --tiny: 2)")
    parser.add_argument("--warmup", type=int, help="untimed calls per model first (default 2, compiled >= 3)")
    parser.add_argument("--budget-s", type=float, default=270.0, help="start no case past this (seconds)")
    args = parser.parse_args()
    # flex_attention compiles its kernel on first use and has no backward on CPU: asked for, not assumed, in tiny mode.
    tiny = {"sizes": ["toy"], "backends": ["sdpa", "flash_attention_2"], "compile": "no", "batch": 4}
    full = {"sizes": ["small", "base"], "backends": list(BACKENDS), "compile": "both", "batch": 256}
    tiny |= {"diagnose_batch": 4, "reps": 2, "steps": 2, "warmup": 1}
    full |= {"diagnose_batch": 64, "reps": 5, "steps": 5, "warmup": 2}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def plan(args: argparse.Namespace) -> list[Case]:
    """Every case, most wanted first: eager before compiled, sdpa (and diagnose) before the other backends."""
    cases = []
    for compiled in {"no": [False], "yes": [True], "both": [False, True]}[args.compile]:
        for backend in args.backends:
            cases += [Case(s, backend, compiled, m) for s in args.sizes for m in ("forward", "train")]
            if backend == "sdpa" and not compiled:
                cases += [Case(s, "sdpa", False, "diagnose") for s in args.sizes]
    return cases


def peer_config(size: str) -> ViTConfig:
    """transformers' ViT with the preset's dims (the same recipe as bench/model.py)."""
    reference = preset_config("plain", size)
    fields = ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    fields += ("intermediate_size", "layer_norm_eps")
    return ViTConfig(**{f: getattr(reference, f) for f in fields}, num_labels=NUM_LABELS)


@functools.cache
def cpu_models(size: str) -> dict[str, torch.nn.Module]:
    """The five fp32 models of a size, built once: every case copies them (random init of ViT-B takes seconds)."""
    torch.manual_seed(0)
    models = {PEER: ViTForImageClassification(peer_config(size))}
    for variant in VARIANTS:
        config = preset_config(variant, size, num_labels=NUM_LABELS)
        models[f"SinkViT {variant}"] = SinkViTForImageClassification(config)
    return models


def place(case: Case, scope: str, device: torch.device) -> dict[str, torch.nn.Module]:
    """Copies of the size's models on `device` with the case's backend, dtype, mode and compilation."""
    dtype = torch.float32 if case.mode == "train" else torch.bfloat16
    models = {}
    for name, model in cpu_models(case.size).items():
        model = copy.deepcopy(model).to(device, dtype).train(case.mode == "train")
        try:
            model.set_attn_implementation(case.backend)
        except Exception as error:  # ImportError (package missing), ValueError (unsupported): the reason is printed
            raise Unavailable(reason(error)) from error
        if case.compiled:
            modules = model.base_model.layers if scope == "blocks" else [model]
            for module in modules:
                module.compile(dynamic=False)  # one static specialization per token count (reg adds 4 tokens)
        models[name] = model
    return models


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def forward_call(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        with torch.inference_mode():
            model(pixel_values=x)

    return call


def train_call(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    def call() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        optimizer.step()

    return call


def own_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes of the model's weights, buffers, gradients and optimizer state (shared storage counted once)."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def peak_mib(
    call: Callable[[], None],
    device: torch.device,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> float | None:
    """Peak MiB of one call of `model` as if it ran alone: the others' and the inputs' memory is subtracted."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    others = torch.cuda.memory_allocated() - own_bytes(model, optimizer)
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - others) / 2**20


def measure(calls: dict, args: argparse.Namespace, steps: int, sync: Callable[[], None]) -> dict[object, list[float]]:
    """Seconds of `steps` calls per key and round, over `args.reps` rounds whose order rotates."""
    names = list(calls)
    times = {name: [] for name in names}
    for round_index in range(args.reps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                calls[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def warm_up(calls: dict, count: int, sync: Callable[[], None]) -> None:
    for call in calls.values():
        for _ in range(count):
            call()
    sync()


def ratio(times: dict, name: object, against: object) -> float:
    """Median over rounds of time(against) / time(name)."""
    return statistics.median(a / b for a, b in zip(times[against], times[name], strict=True))


def run_case(case: Case, args: argparse.Namespace, device: torch.device) -> dict[str, dict]:
    """The figures of one case, per model: images_per_s, ratio (vs the peer), peak_mib (and x_forward)."""
    if case.compiled:
        # Every model's blocks share one code object (transformers' checkpointing wrapper), so the recompile limit
        # counts all five models' entries: past it, dynamo would run later models eagerly without a word.
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    models = place(case, args.compile_scope, device)
    sync = synchronizer(device)
    warmup = max(args.warmup, 3) if case.compiled else args.warmup
    config = models[PEER].config
    shape = (config.num_channels, config.image_size, config.image_size)
    if case.mode == "diagnose":
        return diagnose_case(models, torch.randn(args.diagnose_batch, *shape, device=device).bfloat16(), args, sync)
    x = torch.randn(args.batch, *shape, device=device)
    optimizers = {}
    if case.mode == "train":
        labels = torch.randint(0, NUM_LABELS, (args.batch,), device=device)
        optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
        calls = {name: train_call(model, optimizers[name], x, labels) for name, model in models.items()}
    else:
        x = x.bfloat16()
        calls = {name: forward_call(model, x) for name, model in models.items()}
    warm_up(calls, warmup, sync)
    peaks = {name: peak_mib(calls[name], device, models[name], optimizers.get(name)) for name in calls}
    times = measure(calls, args, args.steps, sync)
    speed = {name: args.batch * args.steps / statistics.median(times[name]) for name in calls}
    return {n: {"images_per_s": speed[n], "ratio": ratio(times, n, PEER), "peak_mib": peaks[n]} for n in calls}


def diagnose_case(models: dict, x: torch.Tensor, args: argparse.Namespace, sync: Callable[[], None]) -> dict:
    """diagnose against the forward of the same model on the same images, both timed in the same rounds."""
    device = x.device
    calls = {}
    for name, model in models.items():
        calls[name, "forward"] = forward_call(model, x)
        calls[name, "diagnose"] = functools.partial(diagnose, model, [x])
    warm_up(calls, args.warmup, sync)
    peaks = {name: peak_mib(calls[name, "diagnose"], device, model) for name, model in models.items()}
    times = measure(calls, args, 1, sync)
    figures = {}
    for name in models:
        figures[name] = {
            "images_per_s": len(x) / statistics.median(times[name, "diagnose"]),
            "ratio": ratio(times, (name, "diagnose"), (PEER, "diagnose")),
            "peak_mib": peaks[name],
            "x_forward": ratio(times, (name, "forward"), (name, "diagnose")),  # diagnose time / forward time
        }
    return figures


def print_rows(case: Case, figures: dict[str, dict]) -> None:
    for name, row in figures.items():
        peak = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        x_forward = f"{row['x_forward']:.2f}" if "x_forward" in row else "-"
        print(
            f"{case.size:6} {case.backend:17} {'yes' if case.compiled else 'no':7} {case.mode:8} {name:17} "
            f"{row['images_per_s']:10.1f} {row['ratio']:7.3f} {peak:>9} {x_forward:>6}",
            flush=True,
        )


def header(args: argparse.Namespace, device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return (
        f"{name}; torch {torch.__version__}, transformers {transformers.__version__}; batch {args.batch} "
        f"(diagnose {args.diagnose_batch}); inference: bf16 weights; training: fp32 weights + bf16 autocast, AdamW; "
        f"{args.reps} rounds x {args.steps} steps; compile scope {args.compile_scope}; budget {args.budget_s:.0f} s"
    )


def reason(error: Exception) -> str:
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def expected(durations: dict[tuple[bool, str], float], case: Case) -> float:
    """Seconds `case` should take: as long as the last case compiled alike in the same mode (compiling, which
    dominates, costs about the same at every size), else a training step twice its forward (backward compiles too)."""
    if (case.compiled, case.mode) in durations:
        return durations[case.compiled, case.mode]
    return 2 * durations.get((case.compiled, "forward"), 0.0) if case.mode == "train" else 0.0


def run_all(args: argparse.Namespace, device: torch.device, started: float) -> dict:
    """Run the plan within the budget, printing each case's rows as it ends; return every figure."""
    figures = {"device": header(args, device), "cases": [], "skipped": [], "failed": {}, "unavailable": {}}
    durations = {}  # (compiled, mode) -> seconds of the last such case
    for case in plan(args):
        elapsed, kind = time.perf_counter() - started, (case.compiled, case.mode)
        if case.backend in figures["unavailable"]:
            continue
        if elapsed + expected(durations, case) > args.budget_s:
            figures["skipped"].append(case.label)
            continue
        try:
            results = run_case(case, args, device)
        except Unavailable as error:
            figures["unavailable"][case.backend] = str(error)
            print(f"{case.backend}: unavailable, skipped ({error})", flush=True)
            continue
        except Exception as error:  # one failing case (out of memory, a backend's limits) must not lose the rest
            figures["failed"][case.label] = reason(error)
            print(f"{case.label}: failed ({reason(error)})", flush=True)
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        durations[kind] = time.perf_counter() - started - elapsed
        print_rows(case, results)
        figures["cases"].append({**case.__dict__, "seconds": durations[kind], "models": results})
    return figures


def main() -> None:
    started = time.perf_counter()
    args = parse_args()
    if not torch.cuda.is_available() and not args.tiny:
        raise SystemExit("bench/gpu.py: no CUDA GPU here; run `python bench/gpu.py --tiny` for the CPU smoke mode.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(header(args, device))
    columns = ("size", "backend", "compile", "mode", "model", "img/s", "vs ViT", "peak MiB", "x fwd")
    widths = (-6, -17, -7, -8, -17, 10, 7, 9, 6)
    print(" ".join(f"{c:{'<' if w < 0 else '>'}{abs(w)}}" for c, w in zip(columns, widths, strict=True)))
    figures = run_all(args, device, started)
    if figures["skipped"]:
        print(f"skipped past the {args.budget_s:.0f} s budget: {', '.join(figures['skipped'])}")
    figures["elapsed_s"] = time.perf_counter() - started
    print(f"done in {figures['elapsed_s']:.0f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

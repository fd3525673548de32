"""The paper's image-level claims over variants x paired seeds: results/images.{md,png}, from the results JSON that
eval/run.py writes for canvas-digits models (every variant of one seed shares its initial weights and data order).
"""

import json
import statistics
from pathlib import Path

from ..evaluation.cards import markdown_table, merge_sections
from ..files import atomic_write, save_figure
from .reference import PAPER_MIOU, PAPER_SINKS
from .robustness import (
    claims_section,
    cls_slope,
    content_sections,
    grid_sections,
    paired_text,
    sign_test_floor,
    spread,
)

DATASET = "canvas-digits"
ARMS = ("plain", "gated", "gated-headwise", "reg", "gated-reg", "gp", "gp-penalty")


def arm(result: dict) -> str:
    """The variant, with `-penalty` when it was trained with the common-mode penalty."""
    training = result["training"]
    penalty = training["train"].get("common_mode_penalty") or 0
    return training["model"]["variant"] + ("-penalty" if penalty > 0 else "")


def canvas_results(folder: Path) -> dict[str, dict[int, dict]]:
    """arm -> seed -> result, for every canvas-digits model trained here with results in `folder` (the first
    file by name wins where two hold the same arm and seed)."""
    found: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        training = result.get("training") if isinstance(result, dict) else None
        if not training or training["data"].get("dataset") != DATASET:
            continue
        found.setdefault(arm(result), {}).setdefault(training["train"]["seed"], result)
    return {name: found[name] for name in sorted(found, key=lambda a: (ARMS + (a,)).index(a))}


def figures(result: dict) -> dict:
    """The numbers each table reads from one model's result."""
    sinks, layers, heads = result["sinks"], result["layers"], result["heads"]
    events = sorted((h["events"] for h in heads), reverse=True)
    total = sum(events)
    by_token = sinks.get("per_image_by_token")

    def register_share(kind: str) -> float | None:
        if by_token is None:
            return None
        count = sum(by_token[kind].values())
        return by_token[kind]["register"] / count if count else None

    stability = result.get("stability") or {}
    dense = result.get("dense_probe") or {}
    later = sinks.get("excluding_first_layer") or {}  # blocks >= 1, as the paper's tables count

    def percent(key: str) -> float | None:
        return None if dense.get(key) is None else 100 * dense[key]

    return {
        "accuracy": None if not result.get("accuracy") else 100 * result["accuracy"]["top1"],
        "miou": percent("miou"),
        "foreground_miou": percent("foreground_miou"),
        "pixel_miou": percent("pixel_miou"),
        "sinks": sinks["sinks_per_image"],
        "nop": sinks["nop_per_image"],
        "broadcast": sinks["broadcast_per_image"],
        "other": sinks["other_per_image"],
        **{f"{key}_after_block0": later.get(f"{key}_per_image") for key in ("sinks", "nop", "broadcast", "other")},
        "cls_share": sinks["sink_share"]["cls"],
        "patch_share": sinks["sink_share"]["patch"],
        "register_share": sinks["sink_share"]["register"],
        "register_share_nop": register_share("nop"),
        "register_share_broadcast": register_share("broadcast"),
        "nop_on_registers": None if by_token is None else by_token["nop"]["register"],
        "layer_sinks": [layer["sinks_per_image"] for layer in layers],
        "layer_cls": [layer["cls"] / layer["events"] if layer["events"] else None for layer in layers],
        "cls_slope": cls_slope([layer["cls"] / layer["events"] if layer["events"] else None for layer in layers]),
        "heads_with_sinks": sum(count > 0 for count in events),
        "top_head": events[0] / total if total else None,
        "top3_heads": sum(events[:3]) / total if total else None,
        "largest_activation": stability.get("largest_activation"),
        "token_norm_ratio": stability.get("token_norm_max_over_median"),
        "loss_spikes": stability.get("loss_spikes"),
        "largest_grad_norm": stability.get("largest_grad_norm"),
        **_grid_figures(sinks.get("sensitivity")),
        **_content_figures("", result),
        **{
            k: v
            for name, block in (result.get("content_sets") or {}).items()
            for k, v in _content_figures(name + ":", block).items()
        },
    }


def _grid_figures(sensitivity: dict | None) -> dict:
    """Sinks, NOP and broadcast per image under each cell of the rule's grid, keyed `grid:event:routed:queries:
    blocks:quantity`, and the cells in order."""
    if not sensitivity:
        return {}
    out = {"grid_cells": []}
    for cell in sensitivity["cells"]:
        key = (cell["event"], cell["routed"], cell["queries"], cell["blocks"])
        out["grid_cells"].append(key)
        for quantity in ("sinks", "nop", "broadcast"):
            out["grid:{}:{}:{}:{}:".format(*key) + quantity] = cell[f"{quantity}_per_image"]
    return out


def _content_figures(prefix: str, block: dict) -> dict:
    """Ink attribution and, for a content set (`prefix` its name and a colon), its sinks by class and token."""
    ink = block.get("ink")
    out = {} if ink is None else {
        prefix + "on_ink": ink["on_ink"], prefix + "ink_chance": ink["chance"], prefix + "patch_events":
        ink["patch_events"], prefix + "on_ink_nop": ink["by_class"]["nop"]["on_ink"],
        prefix + "on_ink_broadcast": ink["by_class"]["broadcast"]["on_ink"],
    }  # fmt: skip
    if prefix:  # a content set's own sinks; the held-out canvases' are the other tables'
        sinks, layers = block["sinks"], block["layers"]
        out |= {prefix + k: sinks[f"{k}_per_image"] for k in ("sinks", "nop", "broadcast")}
        out |= {prefix + f"{t}_share": sinks["sink_share"][t] for t in ("cls", "register", "patch")}
        nop = sinks["per_image_by_token"]["nop"]
        out[prefix + "register_share_nop"] = nop["register"] / sum(nop.values()) if sum(nop.values()) else None
        out[prefix + "layer_cls"] = [layer["cls"] / layer["events"] if layer["events"] else None for layer in layers]
        out[prefix + "cls_slope"] = cls_slope(out[prefix + "layer_cls"])
    return out


# Figure keys and their headings, per table of means over seeds.
CLASSES = {"accuracy": "top-1 (%)", "sinks": "sinks / img", "nop": "NOP / img", "broadcast": "broadcast / img",
           "other": "other / img"}  # fmt: skip
AFTER_BLOCK0 = {f"{key}_after_block0": heading for key, heading in CLASSES.items() if key != "accuracy"}
PAIRED = {"accuracy": "Δ top-1 (pp)", "sinks": "Δ sinks / img", "nop": "Δ NOP / img", "broadcast": "Δ broadcast / img"}
PAIRED_DENSE = {"miou": "Δ mIoU (pp)"}  # only when some model has a dense probe, so older tables stay as they were
DENSE = {"miou": "mIoU (%)", "foreground_miou": "foreground mIoU (%)", "pixel_miou": "pixel mIoU (%)",
         "accuracy": "top-1 (%)", "sinks": "sinks / img"}  # fmt: skip
PAIRED_STABILITY = {"largest_activation": "Δ largest activation", "token_norm_ratio": "Δ token-norm max / median",
                    "largest_grad_norm": "Δ largest grad norm", "loss_spikes": "Δ loss spikes",
                    "top3_heads": "Δ top-3 heads' share", "cls_share": "Δ CLS share"}  # fmt: skip
CONCENTRATION = {"heads_with_sinks": "heads with sinks", "top_head": "top head", "top3_heads": "top 3 heads"}
REGISTERS = {"register_share": "register share", "register_share_nop": "register share of NOP",
             "register_share_broadcast": "register share of broadcast", "nop_on_registers": "NOP on registers / img",
             "cls_share": "CLS share"}  # fmt: skip
STABILITY = {"accuracy": "top-1 (%)", "largest_activation": "largest activation",
             "token_norm_ratio": "token-norm max / median", "loss_spikes": "loss spikes",
             "largest_grad_norm": "largest grad norm"}  # fmt: skip


def tables(results: dict[str, dict[int, dict]]) -> str:
    """The generated section of results/images.md: one table per claim, mean ± sd over seeds."""
    numbers = {name: {seed: figures(r) for seed, r in sorted(by_seed.items())} for name, by_seed in results.items()}
    seeds = sorted({seed for by_seed in numbers.values() for seed in by_seed})
    probed = _probed(numbers)
    sections = [
        "### Sinks per image by class (gating vs NOP, registers, global pathway + penalty)\n\n"
        + _means(numbers, CLASSES, against_paper=True),
        "### The same without block 0 (like for like: the paper's tables leave the first block out)\n\n"
        + _means(numbers, AFTER_BLOCK0, against_paper=True),
    ]
    if "plain" in numbers:
        sections.append(
            "### Paired differences from plain, seed by seed (mean ± sd (per seed; paired t p))\n\n"
            + _paired(numbers, seeds, PAIRED | (PAIRED_DENSE if probed else {}))
        )
        sections.append(
            "### Paired differences from plain in stability and concentration, seed by seed\n\n"
            + _paired(numbers, seeds, PAIRED_STABILITY)
        )
    sections.append(
        "### Where sinks sit over depth: sinks / img per layer (share of them on CLS, mean over seeds)\n\n"
        + _depth(numbers)
    )
    sections.append(
        "### How concentrated sinks are in a few heads (shares of all sink events)\n\n" + _means(numbers, CONCENTRATION)
    )
    registered = {name: runs for name, runs in numbers.items() if "reg" in name}
    if registered:
        sections.append(
            "### Registers: how many sinks they absorb, and whether they also serve NOP\n\n"
            + _means(registered, REGISTERS)
        )
    sections[:0] = claims_section(numbers)
    sections += content_sections(numbers)
    sections += grid_sections(numbers)
    sections.append("### Stability and performance (training run and held-out images)\n\n" + _means(numbers, STABILITY))
    if probed:
        sections.append(
            "### Dense probe: mIoU of a linear probe on frozen patch tokens (paper: ADE20K / VOC mIoU, LeJEPA ViT-L)"
            "\n\n" + _dense(probed)
        )
    models = ", ".join(f"{name}: seeds {', '.join(map(str, sorted(by_seed)))}" for name, by_seed in results.items())
    most = max(len(by_seed) for by_seed in results.values())
    return (
        f"Models ({models}); mean ± sample standard deviation over seeds. Paired differences give each seed's "
        f"difference and the two-sided paired t-test's p; with {most} paired seeds a sign test cannot go below p = "
        f"{sign_test_floor(most):.3g} ({sign_test_floor(8):.2g} with 8). Verdicts: holds (p < 0.05 in the "
        "paper's direction), leans (its direction in the mean and in three quarters of the seeds), no evidence, "
        "opposite (p < 0.05 against it).\n\n" + "\n\n".join(sections)
    )


def _means(numbers: dict[str, dict[int, dict]], columns: dict[str, str], against_paper: bool = False) -> str:
    """One row per variant: mean ± sd over its seeds of each column; `against_paper` adds the seed count and the
    paper's NOP / broadcast sinks per image."""
    rows = []
    for name, runs in numbers.items():
        cells = [spread([n[key] for n in runs.values()]) for key in columns]
        if against_paper:
            paper = "{:.2f} / {:.2f}".format(*PAPER_SINKS[name]) if name in PAPER_SINKS else ""
            cells = [len(runs), *cells, paper]
        rows.append([name, *cells])
    headings = [*columns.values()]
    if against_paper:
        headings = ["seeds", *headings, "paper NOP / broadcast"]
    return markdown_table(["variant", *headings], rows)


def _probed(numbers: dict[str, dict[int, dict]]) -> dict[str, dict[int, dict]]:
    """Each variant's seeds that have a dense-probe mIoU (variants without any kept, with none); empty when no model
    has one."""
    probed = {name: {s: n for s, n in runs.items() if n["miou"] is not None} for name, runs in numbers.items()}
    return probed if any(probed.values()) else {}


def _dense(probed: dict[str, dict[int, dict]]) -> str:
    """One row per variant over its probed seeds (so top-1 and sinks describe the same models as the mIoU), with the
    paper's mIoU and its change from the paper's baseline."""
    rows = []
    for name, runs in probed.items():
        cells = [spread([n[key] for n in runs.values()]) for key in DENSE]
        rows.append([name, len(runs), *cells, *_paper_miou(name)])
    headings = ["seeds with a probe", *DENSE.values(), "paper ADE20K / VOC", "paper change from baseline"]
    return markdown_table(["variant", *headings], rows)


def _paper_miou(name: str) -> tuple[str, str]:
    """The paper's ADE20K / VOC mIoU for this arm and its change from the paper's baseline; blank where it has none."""
    if name not in PAPER_MIOU:
        return "", ""
    (ade, voc), (base_ade, base_voc) = PAPER_MIOU[name], PAPER_MIOU["plain"]
    change = "-" if name == "plain" else f"{ade - base_ade:+.1f} / {voc - base_voc:+.1f}"
    return f"{ade:.1f} / {voc:.1f}", change


def _depth(numbers: dict[str, dict[int, dict]]) -> str:
    """Sinks per image in each layer, mean ± sd over seeds, with the share of them on CLS."""
    depth = max(len(n["layer_sinks"]) for by_seed in numbers.values() for n in by_seed.values())
    rows = []
    for name in numbers:
        cells = []
        for layer in range(depth):
            runs = [n for n in numbers[name].values() if layer < len(n["layer_sinks"])]  # depths may differ
            sinks = spread([n["layer_sinks"][layer] for n in runs])
            cls = [n["layer_cls"][layer] for n in runs if n["layer_cls"][layer] is not None]
            cells.append(sinks + (f" ({100 * statistics.fmean(cls):.0f}% CLS)" if cls else ""))
        rows.append([name, *cells])
    return markdown_table(["variant", *(f"layer {layer}" for layer in range(depth))], rows)


def _paired(numbers: dict[str, dict[int, dict]], seeds: list[int], columns: dict[str, str]) -> str:
    """Each variant minus plain of the same seed: mean ± sd, then the per-seed differences."""
    rows = []
    for name in numbers:
        if name == "plain":
            continue
        paired = [s for s in seeds if s in numbers[name] and s in numbers["plain"]]
        row = [name, ", ".join(map(str, paired))]
        for key in columns:
            pairs = [(numbers[name][s][key], numbers["plain"][s][key]) for s in paired]
            row.append(paired_text([a - b for a, b in pairs if a is not None and b is not None]))
        rows.append(row)
    return markdown_table(["variant", "seeds", *columns.values()], rows)


def plot(results: dict[str, dict[int, dict]], path: Path) -> Path:
    """Four panels: NOP and broadcast sinks per variant, each on its own scale (bars: mean, dots: seeds), sinks per
    layer, and top-1 against sinks per image; a fifth, dense-probe mIoU against sinks per image, when some model has
    a dense probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers = {name: [figures(r) for _, r in sorted(by_seed.items())] for name, by_seed in results.items()}
    names = list(numbers)
    dense = any(n["miou"] is not None for runs in numbers.values() for n in runs)
    panels = 5 if dense else 4
    fig, (nop, broadcast, depth, scatter, *probe) = plt.subplots(1, panels, figsize=(5 * panels, 4.6))
    for axis, key, label, colour in (
        (nop, "nop", "NOP", "tab:blue"),
        (broadcast, "broadcast", "Broadcast", "tab:orange"),
    ):
        for index, name in enumerate(names):
            values = [n[key] for n in numbers[name]]
            axis.bar(index, statistics.fmean(values), 0.6, color=colour, alpha=0.6)
            axis.scatter([index] * len(values), values, color="black", s=10, zorder=3)
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
        axis.set_ylabel(f"{label} sinks per image")
        axis.set_title(f"{label} sinks (bars: mean, dots: seeds)")
    for name in names:
        layers = [n["layer_sinks"] for n in numbers[name]]
        means = [statistics.fmean(v[i] for v in layers if i < len(v)) for i in range(max(map(len, layers)))]
        depth.plot(range(len(means)), means, marker="o", label=name)
    depth.set_xlabel("layer")
    depth.set_ylabel("sink events per image (mean over seeds)")
    depth.set_title("Where sinks sit over depth")
    depth.legend(fontsize=8)
    _against_sinks(scatter, numbers, "accuracy", "held-out top-1 (%)", "Accuracy against sinks (one dot per seed)")
    for axis in probe:  # the x label says "per image": the full phrase in the title overran the panel
        _against_sinks(axis, numbers, "miou", "mIoU (%)", "Dense-probe mIoU against sinks (one dot per seed)")
        axis.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)


def _against_sinks(axis, numbers: dict[str, list[dict]], key: str, label: str, title: str) -> None:
    """One dot per seed that measured `key`, against its sinks per image; one colour per variant."""
    for name, runs in numbers.items():
        measured = [n for n in runs if n[key] is not None]
        axis.scatter([n["sinks"] for n in measured], [n[key] for n in measured], label=name)
    axis.set_xlabel("sink events per image")
    axis.set_ylabel(label)
    axis.set_title(title)


def write_images(results_dir: Path) -> Path | None:
    """Regenerate results_dir/images.{md,png} from every canvas-digits result there; text outside the generated
    section is kept. None (and nothing written) when there is no such result."""
    results = canvas_results(results_dir)
    if not results:
        return None
    figure = plot(results, results_dir / "images.png")
    generated = (
        "<!-- sink-models:begin table -->\n"
        "Measured by `accelerate launch eval/run.py` on the held-out canvas-digits images of each model.\n"
        + tables(results)
        + f"\n\n![Sinks of the image models by variant and seed]({figure.name})\n<!-- sink-models:end table -->"
    )
    path = results_dir / "images.md"
    old = path.read_text() if path.exists() else "# The paper's image-level claims, measured\n\n"
    atomic_write(path, merge_sections(old, generated))
    return path

"""How far the canvas conclusions carry: paired statistics over seeds, the event rule's sensitivity grid, where patch
sinks sit (digit ink or not) and the content-controlled canvases (docs/science.md section 9). Tables for
results/images.md, from the figures `comparison.figures` reads out of each model's results."""

import statistics

from scipy import stats

from ..evaluation.cards import markdown_table
from ..evaluation.content import CONTENT_SETS

# The paper's claims tested on every grid cell and content set: (claim, variant, quantity, the paper's direction of
# the variant's difference from plain).
CLAIMS = (
    ("gates remove NOP sinks", "gated", "nop", -1),
    ("the headwise gate removes NOP sinks", "gated-headwise", "nop", -1),
    ("broadcast sinks stay (grow) under gating", "gated", "broadcast", 1),
    ("registers cut the sink count", "reg", "sinks", -1),
    ("sinks move onto registers (register share)", "reg", "register_share", 1),
    ("gate + registers remove NOP sinks", "gated-reg", "nop", -1),
    ("global pathway + penalty removes broadcasts", "gp-penalty", "broadcast", -1),
)
# Claims on other figures, read at the default rule: (claim, variant, figure key, the paper's direction).
OTHER_CLAIMS = (
    ("the global pathway is more accurate", "gp", "accuracy", 1),
    ("gates raise the dense probe (paper +2.0 / +4.2 mIoU)", "gated", "miou", 1),
    ("registers raise the dense probe (paper +2.1 / +6.1)", "reg", "miou", 1),
    ("gate + registers raise the dense probe (paper +3.4 / +8.4)", "gated-reg", "miou", 1),
    ("gate + registers lower the largest activation", "gated-reg", "largest_activation", -1),
    ("gating lowers the largest activation", "gated", "largest_activation", -1),
)
LEVEL = 0.05  # two-sided


def spread(values: list) -> str:
    """mean ± sample standard deviation over seeds (the mean alone for one seed); '-' when nothing was measured; a
    seed without a value (None) is left out and said so: `(n of m seeds)`."""
    measured = [v for v in values if v is not None]
    if not measured:
        return "-"
    mean = statistics.fmean(measured)
    text = _fmt(mean) if len(measured) == 1 else f"{_fmt(mean)} ± {_fmt(statistics.stdev(measured))}"
    return text if len(measured) == len(values) else f"{text} ({len(measured)} of {len(values)} seeds)"


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def paired_t(diffs: list[float]) -> float | None:
    """The two-sided p-value of a paired t-test (one-sample t on the differences): 0 where every difference is the
    same non-zero number (t is infinite), None where it is undefined (fewer than two seeds, or every one zero)."""
    if len(diffs) < 2:
        return None
    if statistics.stdev(diffs) == 0:
        return None if diffs[0] == 0 else 0.0
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def sign_test_floor(seeds: int) -> float:
    """The smallest two-sided sign-test p-value `seeds` paired seeds can reach (every sign the same)."""
    return min(1.0, 2 * 0.5**seeds)


def verdict(diffs: list[float], direction: int) -> str:
    """holds (p < LEVEL, the paper's direction), opposite (p < LEVEL, against it), leans (the paper's direction in
    the mean and in at least three quarters of the seeds) or no evidence."""
    if not diffs:
        return "-"
    p, mean = paired_t(diffs), statistics.fmean(diffs)
    if p is not None and p < LEVEL and mean * direction > 0:
        return "holds"
    if p is not None and p < LEVEL and mean * direction < 0:
        return "opposite"
    if mean * direction > 0 and sum(d * direction > 0 for d in diffs) >= 0.75 * len(diffs):
        return "leans"
    return "no evidence"


def differences(numbers: dict[str, dict[int, dict]], name: str, key: str) -> list[float]:
    """`name` minus plain of the same seed, over the seeds where both measured `key`."""
    if name not in numbers or "plain" not in numbers:
        return []
    pairs = [(numbers[name][s].get(key), numbers["plain"][s].get(key)) for s in numbers[name] if s in numbers["plain"]]
    return [a - b for a, b in pairs if a is not None and b is not None]


def paired_text(diffs: list[float]) -> str:
    """mean ± sd (per-seed differences; paired t p-value)."""
    if not diffs:
        return "-"
    mean = statistics.fmean(diffs)
    sd = f" ± {statistics.stdev(diffs):.3g}" if len(diffs) > 1 else ""
    p = paired_t(diffs)
    return f"{mean:.3g}{sd} (" + ", ".join(f"{d:+.2f}" for d in diffs) + (f"; p {p:.2g})" if p is not None else ")")


def claims_section(numbers: dict[str, dict[int, dict]]) -> list[str]:
    """The paper's claims at the default rule: over all blocks, without block 0 and counting patch queries only
    (the grid's cell at the default thresholds), then the claims on accuracy, dense probe and stability, then
    whether the CLS share of sinks falls with depth (the per-seed slope over layers)."""
    if "plain" not in numbers:
        return []
    rows = []
    for label, name, quantity, direction in CLAIMS:
        keys = (quantity, f"{quantity}_after_block0", grid_key((0.9, 0.5, "patches", "all"), quantity))
        cells = []
        for key in keys:
            diffs = differences(numbers, name, key)
            cells.append(f"{paired_text(diffs)} **{verdict(diffs, direction)}**" if diffs else "-")
        rows.append([label, f"{name} - plain, {quantity}", *cells])
    for label, name, key, direction in OTHER_CLAIMS:
        diffs = differences(numbers, name, key)
        if diffs:
            rows.append(
                [label, f"{name} - plain, {key}", f"{paired_text(diffs)} **{verdict(diffs, direction)}**", "", ""]
            )
    sinks = markdown_table(["claim", "paired difference", "all blocks", "without block 0", "patch queries only"], rows)
    slopes = []
    for name, runs in numbers.items():
        values = [n["cls_slope"] for n in runs.values() if n.get("cls_slope") is not None]
        slopes.append([name, _slopes_text(values), verdict(values, -1) if len(values) > 1 else "-"])
    depth = markdown_table(["variant", "slope of the CLS share per layer (per seed; t p)", "verdict"], slopes)
    return [
        "### The paper's claims at the default rule: paired difference from plain (per seed; paired t p), verdict\n\n"
        + sinks,
        "### CLS sinks early, patch sinks late? The CLS share of each layer's sinks, its least-squares slope over "
        "layers per seed (the paper's direction: falling)\n\n" + depth,
    ]


def _slopes_text(values: list[float]) -> str:
    """mean (per-seed slopes; one-sample t p)."""
    if not values:
        return "-"
    p = paired_t(values)
    signs = ", ".join(f"{v:+.3f}" for v in values)
    return f"{statistics.fmean(values):+.3f} ({signs}" + (f"; p {p:.2g})" if p is not None else ")")


def cls_slope(shares: list[float | None]) -> float | None:
    """The least-squares slope of the CLS share over the layers that have sinks; None with fewer than two."""
    points = [(layer, share) for layer, share in enumerate(shares) if share is not None]
    if len(points) < 2:
        return None
    return float(stats.linregress(*zip(*points, strict=True)).slope)


def grid_cells(numbers: dict[str, dict[int, dict]]) -> list[tuple]:
    """The grid's cells, (event, routed, queries, blocks), in the order of the first result that has them."""
    for runs in numbers.values():
        for figures in runs.values():
            if figures.get("grid_cells"):
                return figures["grid_cells"]
    return []


def grid_key(cell: tuple, quantity: str) -> str:
    return "grid:{}:{}:{}:{}:".format(*cell) + quantity


def grid_sections(numbers: dict[str, dict[int, dict]]) -> list[str]:
    """The claims across the grid (a verdict count per claim, then cell by cell) and each variant's sinks per
    image per cell; nothing when no result has the grid."""
    cells = grid_cells(numbers)
    if not cells:
        return []
    claims = [c for c in CLAIMS if c[1] in numbers and "plain" in numbers and c[2] in ("sinks", "nop", "broadcast")]
    rows = []
    for label, name, quantity, direction in claims:
        verdicts = [verdict(differences(numbers, name, grid_key(cell, quantity)), direction) for cell in cells]
        seeds = len(differences(numbers, name, grid_key(cells[0], quantity)))
        counts = [sum(v == word for v in verdicts) for word in ("holds", "leans", "no evidence", "opposite")]
        rows.append([label, f"{name} - plain, {quantity}", seeds, *counts])
    summary = markdown_table(["claim", "paired difference", "seeds", "holds", "leans", "no evidence", "opposite"], rows)
    detail = []
    for cell in cells:
        row = list(cell)
        for _, name, quantity, direction in claims:
            diffs = differences(numbers, name, grid_key(cell, quantity))
            row.append(f"{paired_text(diffs)} {verdict(diffs, direction)}" if diffs else "-")
        detail.append(row)
    detail_table = markdown_table(["event", "routed", "queries", "blocks", *(c[0] for c in claims)], detail)
    levels = []
    for cell in cells:
        levels.append([*cell, *(_mean(numbers[name], grid_key(cell, "sinks")) for name in numbers)])
    levels_table = markdown_table(["event", "routed", "queries", "blocks", *numbers], levels)
    return [
        f"### The claims under every choice of the rule (verdicts over the grid's {len(cells)} cells)\n\n" + summary,
        "### The claims cell by cell: paired difference from plain (per seed; paired t p) and verdict\n\n"
        + detail_table,
        "### Sinks per image under each choice of the rule (mean over seeds)\n\n" + levels_table,
    ]


def _mean(runs: dict[int, dict], key: str) -> str:
    values = [n.get(key) for n in runs.values() if n.get(key) is not None]
    return "-" if not values else f"{statistics.fmean(values):.3g}"


INK = {"on_ink": "patch sinks on ink", "on_ink_nop": "NOP patch sinks on ink",
       "on_ink_broadcast": "broadcast patch sinks on ink", "ink_chance": "chance (patches with ink)",
       "patch_share": "share of sinks on patches"}  # fmt: skip
CONTENT = {"sinks": "sinks / img", "nop": "NOP / img", "broadcast": "broadcast / img", "cls_share": "CLS share",
           "register_share": "register share", "patch_share": "patch share", "on_ink": "patch sinks on ink",
           "ink_chance": "chance"}  # fmt: skip


def content_sections(numbers: dict[str, dict[int, dict]]) -> list[str]:
    """Ink attribution on the held-out canvases, then per content set the sinks by class and token type, the
    paper's claims on it and the CLS share by layer; nothing when no result has them."""
    sections = []
    if any(n.get("on_ink") is not None or n.get("patch_events") == 0 for r in numbers.values() for n in r.values()):
        rows = [[name, *(spread([n.get(key) for n in runs.values()]) for key in INK)] for name, runs in numbers.items()]
        sections.append(
            "### Where patch sinks sit: on digit ink or not (held-out canvases; share of patch-sink events)\n\n"
            + markdown_table(["variant", *INK.values()], rows)
        )
    present = [s for s in CONTENT_SETS if any(f"{s}:sinks" in n for r in numbers.values() for n in r.values())]
    for content in present:
        prefix = f"{content}:"
        rows = [
            [name, *(spread([n.get(prefix + key) for n in runs.values()]) for key in CONTENT)]
            for name, runs in numbers.items()
        ]
        claims = []
        for label, name, quantity, direction in CLAIMS:
            diffs = differences(numbers, name, prefix + quantity)
            if diffs:
                claims.append([label, paired_text(diffs), verdict(diffs, direction)])
        for name, runs in numbers.items():  # CLS early, patches late: the CLS share falls with depth
            slopes = [n[prefix + "cls_slope"] for n in runs.values() if n.get(prefix + "cls_slope") is not None]
            if len(slopes) > 1:
                label = f"the CLS share falls with depth ({name}: slope per layer)"
                claims.append([label, _slopes_text(slopes), verdict(slopes, -1)])
        for name in [name for name in ("reg", "gated-reg") if name in numbers]:  # registers repurposed for NOP?
            values = [n.get(prefix + "register_share_nop") for n in numbers[name].values()]
            claims.append([f"registers serve NOP ({name}: register share of NOP sinks)", spread(values), ""])
        depth = _depth_shares(numbers, prefix)
        sections.append(
            f"### {content.capitalize()} canvases: sinks by class and token\n\n"
            + markdown_table(["variant", *CONTENT.values()], rows)
            + f"\n\n{content.capitalize()} canvases, the claims (paired difference from plain; verdict):\n\n"
            + markdown_table(["claim", "difference (per seed; paired t p)", "verdict"], claims)
            + f"\n\n{content.capitalize()} canvases, the CLS share of each layer's sinks (mean over seeds):\n\n"
            + depth
        )
    return sections


def _depth_shares(numbers: dict[str, dict[int, dict]], prefix: str) -> str:
    depth = max((len(n.get(prefix + "layer_cls") or []) for r in numbers.values() for n in r.values()), default=0)
    rows = []
    for name, runs in numbers.items():
        cells = []
        for layer in range(depth):
            shares = [n[prefix + "layer_cls"][layer] for n in runs.values() if _has(n, prefix + "layer_cls", layer)]
            cells.append(f"{100 * statistics.fmean(shares):.0f}%" if shares else "-")
        rows.append([name, *cells])
    return markdown_table(["variant", *(f"layer {layer}" for layer in range(depth))], rows)


def _has(figures: dict, key: str, layer: int) -> bool:
    values = figures.get(key) or []
    return layer < len(values) and values[layer] is not None

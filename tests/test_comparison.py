import json
import math
import statistics

import pytest

from sink_models.paper import comparison
from sink_models.paper.comparison import arm, canvas_results, figures, plot, spread, tables, write_images


def result(variant, seed, *, top1, nop, broadcast, penalty=0.0, dataset="canvas-digits", heads=(6, 3, 1, 0)):
    """A minimal eval/run.py result: 2 layers x 2 heads, 10 images."""
    return {
        "accuracy": {"top1": top1},
        "sinks": {
            "sinks_per_image": nop + broadcast,
            "nop_per_image": nop,
            "broadcast_per_image": broadcast,
            "other_per_image": 0.0,
            "sink_share": {"cls": 0.25, "register": 0.5, "patch": 0.25},
            "excluding_first_layer": {"sinks_per_image": (nop + broadcast) / 4, "nop_per_image": nop / 4,
                                      "broadcast_per_image": broadcast / 4, "other_per_image": 0.0},
            "per_image_by_token": {
                "nop": {"cls": 0.0, "register": nop, "patch": 0.0},
                "broadcast": {"cls": 0.0, "register": broadcast / 2, "patch": broadcast / 2},
                "other": {"cls": 0.0, "register": 0.0, "patch": 0.0},
            },
        },
        "layers": [
            {"sinks_per_image": 0.9, "events": heads[0] + heads[1], "cls": 3},
            {"sinks_per_image": 0.1, "events": heads[2] + heads[3], "cls": 0},
        ],
        "heads": [{"events": count} for count in heads],
        "stability": {"largest_activation": 5.0 + seed, "token_norm_max_over_median": 2.0, "loss_spikes": seed,
                      "largest_grad_norm": 1.5},
        "training": {
            "model": {"variant": variant},
            "data": {"dataset": dataset},
            "train": {"seed": seed, "common_mode_penalty": penalty},
        },
    }  # fmt: skip


def test_the_arm_names_the_penalty():
    assert arm(result("gp", 0, top1=0.9, nop=0, broadcast=0)) == "gp"
    assert arm(result("gp", 0, top1=0.9, nop=0, broadcast=0, penalty=1.0)) == "gp-penalty"


def test_figures_of_one_model():
    numbers = figures(result("reg", 1, top1=0.875, nop=0.2, broadcast=1.0))
    assert numbers["accuracy"] == 87.5 and numbers["sinks"] == pytest.approx(1.2)
    assert numbers["register_share_nop"] == 1.0 and numbers["register_share_broadcast"] == 0.5
    assert numbers["heads_with_sinks"] == 3
    assert numbers["top_head"] == 0.6 and numbers["top3_heads"] == 1.0
    assert numbers["layer_cls"] == [3 / 9, 0.0]
    assert numbers["largest_activation"] == 6.0 and numbers["loss_spikes"] == 1


def test_spread_is_mean_and_sample_standard_deviation():
    values = [1.0, 2.0, 4.0]
    assert spread(values) == f"{statistics.fmean(values):.3g} ± {statistics.stdev(values):.3g}" == "2.33 ± 1.53"
    assert spread([3.0, None]) == "3 (1 of 2 seeds)"  # a seed without a value is never dropped silently
    assert spread([1.0, None, 3.0]) == f"2 ± {statistics.stdev([1.0, 3.0]):.3g} (2 of 3 seeds)"
    assert spread([None]) == "-"


def test_the_tables_pair_seeds_and_compare_with_the_paper(tmp_path):
    results = {
        "plain": {0: result("plain", 0, top1=0.90, nop=0.5, broadcast=2.0),
                  1: result("plain", 1, top1=0.80, nop=0.3, broadcast=4.0)},
        "gated": {0: result("gated", 0, top1=0.95, nop=0.0, broadcast=3.0),
                  1: result("gated", 1, top1=0.80, nop=0.1, broadcast=4.0)},
    }  # fmt: skip
    text = tables(results)
    # accuracy 90 and 80: mean 85, sample sd 7.07; NOP 0.5 and 0.3: 0.4 ± 0.141
    assert "| plain | 2 | 85 ± 7.07 | 3.4 ± 1.27 | 0.4 ± 0.141 | 3 ± 1.41 | 0 ± 0 | 0.25 / 0.09 |" in text
    # without block 0 (a quarter of each here): sinks 0.625 and 1.075 -> 0.85 ± 0.318; NOP 0.125, 0.075 -> 0.1 ± 0.0354
    after = text.split("### The same without block 0")[1]
    assert "| plain | 2 | 0.85 ± 0.318 | 0.1 ± 0.0354 | 0.75 ± 0.354 | 0 ± 0 | 0.25 / 0.09 |" in after
    # gated - plain per seed: top-1 +5, 0 -> 2.5 ± 3.54; NOP -0.5, -0.2 -> -0.35 ± 0.212
    row = next(line for line in text.splitlines() if line.startswith("| gated | 0, 1 |"))
    # paired t with one degree of freedom (two seeds): t = mean / (sd / sqrt 2), p = 1 - 2 atan(|t|) / pi (Cauchy)
    p_nop = 1 - 2 * math.atan(0.35 / (statistics.stdev([-0.5, -0.2]) / math.sqrt(2))) / math.pi
    assert "2.5 ± 3.54 (+5.00, +0.00; p 0.5)" in row and f"-0.35 ± 0.212 (-0.50, -0.20; p {p_nop:.2g})" in row
    assert "| plain | 0.9 ± 0 (33% CLS) | 0.1 ± 0 (0% CLS) |" in text
    assert "Registers" not in text  # no register variant, no register table
    stability = text.split("in stability and concentration")[1].splitlines()
    gated = next(line for line in stability if line.startswith("| gated |"))
    assert gated.startswith("| gated | 0, 1 | 0 ± 0 (+0.00, +0.00) |")  # largest activation 5 + seed in both


def test_write_images_keeps_the_prose_and_reads_only_canvas_results(tmp_path):
    assert write_images(tmp_path) is None and not (tmp_path / "images.md").exists()
    (tmp_path / "digits-model.json").write_text(
        json.dumps(result("plain", 0, top1=1, nop=0, broadcast=0, dataset="digits"))
    )
    assert write_images(tmp_path) is None
    for name, seed in (("vit-reg", 0), ("vit-reg-seed1", 1)):
        (tmp_path / f"{name}.json").write_text(json.dumps(result("reg", seed, top1=0.9, nop=0.1, broadcast=1.0)))
    (tmp_path / "synthetic.json").write_text(json.dumps({"rows": []}))
    assert list(canvas_results(tmp_path)) == ["reg"]
    (tmp_path / "images.md").write_text("# Mine\n\nMy reading.\n")
    write_images(tmp_path)
    text = (tmp_path / "images.md").read_text()
    assert text.startswith("# Mine\n\nMy reading.\n")
    assert "| reg | 0.5 ± 0 | 1 ± 0 | 0.5 ± 0 | 0.1 ± 0 | 0.25 ± 0 |" in text  # the registers' table
    assert (tmp_path / "images.png").read_bytes().startswith(b"\x89PNG")
    write_images(tmp_path)
    assert (tmp_path / "images.md").read_text() == text


def test_models_of_other_depths_and_without_accuracy_still_tabulate(tmp_path):
    deeper = result("plain", 1, top1=0.5, nop=0.0, broadcast=1.0)
    deeper["layers"].append({"sinks_per_image": 0.4, "events": 4, "cls": 4})
    deeper["accuracy"] = None  # e.g. a checkpoint whose head does not name the dataset's classes
    results = {"plain": {0: result("plain", 0, top1=0.8, nop=0.0, broadcast=1.0), 1: deeper}}
    text = tables(results)
    assert "| plain | 2 | 80 (1 of 2 seeds) |" in text  # the one accuracy measured, and said so
    assert text.count("| layer 2 |") == 1 and "| 0.4 (100% CLS) |" in text
    assert plot(results, tmp_path / "images.png").read_bytes().startswith(b"\x89PNG")


def probed(model, miou, foreground_miou, pixel_miou=None):
    """`model` with a dense_probe block as eval/run.py writes it (fractions; pixel scores may be null)."""
    model["dense_probe"] = {"dataset": "canvas-digits", "split": "test", "layer": None, "miou": miou,
                            "foreground_miou": foreground_miou, "accuracy": 0.97, "pixel_miou": pixel_miou,
                            "pixel_foreground_miou": None, "pixel_accuracy": None, "iou": {"0": 0.97}}  # fmt: skip
    return model


def dense_results(with_probes: bool):
    """plain and gated over seeds 0-2 (gated's seed 2 and reg unprobed), gp and gated-reg over seed 0."""
    models = {
        "plain": {s: result("plain", s, top1=0.8 + s / 20, nop=0.5, broadcast=2.0 + s) for s in range(3)},
        "gated": {s: result("gated", s, top1=0.9, nop=0.0, broadcast=3.0) for s in range(3)},
        "reg": {0: result("reg", 0, top1=0.9, nop=0.1, broadcast=1.0)},
        "gated-reg": {0: result("gated-reg", 0, top1=0.9, nop=0.0, broadcast=0.5)},
        "gp": {0: result("gp", 0, top1=0.7, nop=0.2, broadcast=1.0)},
    }
    if with_probes:
        for seed, (miou, foreground) in enumerate(((0.25, 0.1), (0.30, 0.2), (0.35, 0.3))):
            probed(models["plain"][seed], miou, foreground, pixel_miou=0.1 if seed else None)
        probed(models["gated"][0], 0.31, 0.2)
        probed(models["gated"][1], 0.28, 0.2)
        probed(models["gated-reg"][0], 0.40, 0.3)
        probed(models["gp"][0], 0.20, 0.1)
    return models


def row(text, section, name):
    """The line of `name` in the first table after the heading containing `section`."""
    return next(line for line in text.split(section, 1)[1].splitlines() if line.startswith(f"| {name} |"))


def test_figures_read_the_dense_probe_in_percent():
    numbers = figures(probed(result("plain", 0, top1=0.9, nop=0, broadcast=0), 0.331, 0.262))
    assert numbers["miou"] == pytest.approx(33.1) and numbers["foreground_miou"] == pytest.approx(26.2)
    assert numbers["pixel_miou"] is None  # a null pixel score stays unmeasured
    bare = figures(result("plain", 0, top1=0.9, nop=0, broadcast=0))
    assert bare["miou"] is None and bare["foreground_miou"] is None and bare["pixel_miou"] is None


def test_the_dense_probe_table_and_paired_miou():
    text = tables(dense_results(with_probes=True))
    section = "### Dense probe: mIoU of a linear probe on frozen patch tokens (paper: ADE20K / VOC mIoU, LeJEPA ViT-L)"
    assert section + "\n\n| variant | seeds with a probe | mIoU (%) | foreground mIoU (%) | pixel mIoU (%) | " \
        "top-1 (%) | sinks / img | paper ADE20K / VOC | paper change from baseline |" in text  # fmt: skip

    def spread_of(values):
        return f"{statistics.fmean(values):.3g} ± {statistics.stdev(values):.3g}"

    plain = f"| plain | 3 | {spread_of([25, 30, 35])} | {spread_of([10, 20, 30])} | " \
        f"{spread_of([10, 10])} (2 of 3 seeds) | {spread_of([80, 85, 90])} | {spread_of([2.5, 3.5, 4.5])} | " \
        "16.6 / 43.8 | - |"  # fmt: skip
    assert row(text, section, "plain") == plain
    # gated's top-1 and sinks are over its two probed seeds only, like its mIoU
    assert row(text, section, "gated") == f"| gated | 2 | {spread_of([31, 28])} | 20 ± 0 | - | 90 ± 0 | 3 ± 0 | " \
        "18.6 / 48.0 | +2.0 / +4.2 |"  # fmt: skip
    assert row(text, section, "gated-reg").endswith("| 20.0 / 52.2 | +3.4 / +8.4 |")
    assert row(text, section, "reg") == "| reg | 0 | - | - | - | - | - | 18.7 / 49.9 | +2.1 / +6.1 |"
    assert row(text, section, "gp").endswith("|  |  |")  # no paper mIoU for the global pathway
    paired = "### Paired differences from plain, seed by seed"
    p = 1 - 2 * math.atan(2 / (statistics.stdev([6, -2]) / math.sqrt(2))) / math.pi  # seed 2 skipped: one dof
    assert row(text, paired, "gated").endswith(f"| {spread_of([31 - 25, 28 - 30])} (+6.00, -2.00; p {p:.2g}) |")
    assert row(text, paired, "reg").endswith("| - |")


def test_without_dense_probes_the_tables_are_as_before():
    before = tables(dense_results(with_probes=False))
    assert "mIoU" not in before and "Dense probe" not in before
    probed = tables(dense_results(with_probes=True))
    claims = [line for line in probed.splitlines() if "raise the dense probe" in line]
    assert len(claims) == 2  # the gated and gated-reg mIoU claims (reg has no probe)
    after = "\n".join(line for line in probed.splitlines() if line not in claims).split("\n\n### ")
    assert after[-1].startswith("Dense probe")
    paired = next(i for i, text in enumerate(after) if text.startswith("Paired differences from plain, seed by seed"))
    lines = after[paired].splitlines()
    assert lines[2].endswith("| Δ mIoU (pp) |")
    # less its dense section and its last (Δ mIoU) column, the text with probes is the text without them
    after[paired] = "\n".join("|".join(line.split("|")[:-2]) + "|" if line.startswith("|") else line for line in lines)
    assert "\n\n### ".join(after[:-1]) == before


def test_plot_adds_a_dense_probe_panel_only_with_probes(tmp_path, monkeypatch):
    real, panels = comparison.save_figure, []

    def save_figure(figure, path, dpi):  # each panel's title and dots per scatter, then the real save
        panels.append([(axis.get_title(), [len(c.get_offsets()) for c in axis.collections]) for axis in figure.axes])
        return real(figure, path, dpi=dpi)

    monkeypatch.setattr(comparison, "save_figure", save_figure)
    assert plot(dense_results(with_probes=False), tmp_path / "bare.png").read_bytes().startswith(b"\x89PNG")
    assert plot(dense_results(with_probes=True), tmp_path / "dense.png").read_bytes().startswith(b"\x89PNG")
    assert [len(axes) for axes in panels] == [4, 5] and panels[0] == panels[1][:4]
    # one colour per variant (plain, gated, reg, gated-reg, gp), one dot per probed seed
    assert panels[1][4] == ("Dense-probe mIoU against sinks (one dot per seed)", [3, 2, 0, 1, 1])


def with_robustness(model, scale):
    """`model` with a two-cell grid (the plain count times 1 and times `scale`), ink attribution and a blank set."""
    sinks = model["sinks"]
    cells = []
    for event, factor in ((0.9, 1.0), (0.8, scale)):
        counts = {f"{k}_per_image": factor * sinks[f"{k}_per_image"] for k in ("sinks", "nop", "broadcast")}
        cells.append({"event": event, "routed": 0.5, "queries": "all", "blocks": "all", **counts})
    sinks["sensitivity"] = {"grid": {}, "cells": cells}
    ink = {"on_ink": 0.5 * scale, "chance": 0.09, "patch_events": 10,
           "by_class": {"nop": {"on_ink": 1.0}, "broadcast": {"on_ink": 0.25}}}  # fmt: skip
    model["ink"] = ink
    blank = {"sinks_per_image": 2 * scale, "nop_per_image": scale, "broadcast_per_image": scale,
             "sink_share": {"cls": 0.75, "register": 0.25, "patch": 0.0},
             "per_image_by_token": {"nop": {"cls": scale, "register": 0.0, "patch": 0.0}}}  # fmt: skip
    layers = [{"events": 4, "cls": 1}, {"events": 0, "cls": 0}]
    model["content_sets"] = {"blank": {"sinks": blank, "layers": layers, "ink": ink | {"chance": 0.0}}}
    return model


def test_p_values_sign_floor_and_verdicts():
    from sink_models.paper.robustness import paired_t, sign_test_floor, verdict

    assert sign_test_floor(4) == 0.125 and sign_test_floor(8) == 2 / 256
    assert paired_t([1.0, 3.0]) == pytest.approx(
        1 - 2 * math.atan(2 / (statistics.stdev([1, 3]) / math.sqrt(2))) / math.pi
    )
    assert paired_t([1.0]) is None and paired_t([0.0, 0.0]) is None  # undefined
    assert paired_t([2.0, 2.0]) == 0.0 and verdict([-2.0, -2.0], -1) == "holds"  # t is infinite
    assert verdict([-1.0, -1.1, -0.9, -1.2], -1) == "holds"  # p ~ 1e-4
    assert verdict([-1.0, -1.1, -0.9, -1.2], +1) == "opposite"
    assert verdict([-3.0, -0.1, -0.2, 0.1], -1) == "leans"  # three of four down, p 0.4
    assert verdict([-3.0, 0.1, -0.2, 0.1], -1) == "no evidence"  # two of four
    assert verdict([], -1) == "-"


def test_grid_and_content_tables():
    from sink_models.paper.robustness import paired_t

    plain = {s: with_robustness(result("plain", s, top1=0.9, nop=0.5, broadcast=2.0 + s), 2.0) for s in range(3)}
    gated = {s: with_robustness(result("gated", s, top1=0.9, nop=0.1 * s, broadcast=3.0), 1.0) for s in range(3)}
    text = tables({"plain": plain, "gated": gated})
    summary = text.split("### The claims under every choice of the rule (verdicts over the grid's 2 cells)")[1]
    # gated - plain NOP: at event 0.9: 0 - 0.5, 0.1 - 0.5, 0.2 - 0.5 (p < 0.05: holds); at 0.8: 2x plain's -> holds
    assert "| gates remove NOP sinks | gated - plain, nop | 3 | 2 | 0 | 0 | 0 |" in summary
    # broadcast: 3 - (2, 3, 4) at 0.9; 3 - 2 x (2, 3, 4) at 0.8: against the paper's direction, but p 0.12
    assert paired_t([-1.0, -3.0, -5.0]) == pytest.approx(0.1217, abs=1e-4)  # t = -3 / (2 / sqrt 3), 2 dof
    assert "| broadcast sinks stay (grow) under gating | gated - plain, broadcast | 3 | 0 | 0 | 2 | 0 |" in summary
    cells = text.split("### The claims cell by cell")[1]
    assert "| 0.9 | 0.5 | all | all | -0.4 ± 0.1 (-0.50, -0.40, -0.30; p " in cells
    levels = text.split("### Sinks per image under each choice of the rule (mean over seeds)")[1]
    assert "| 0.8 | 0.5 | all | all | 7 | 3.1 |" in levels  # plain 2 x (2.5, 3.5, 4.5); gated 3 + (0, 0.1, 0.2)
    ink = text.split("### Where patch sinks sit")[1]
    assert "| plain | 1 ± 0 | 1 ± 0 | 0.25 ± 0 | 0.09 ± 0 | 0.25 ± 0 |" in ink
    blank = text.split("### Blank canvases: sinks by class and token")[1]
    assert "| plain | 4 ± 0 | 2 ± 0 | 2 ± 0 | 0.75 ± 0 | 0.25 ± 0 | 0 ± 0 | 1 ± 0 | 0 ± 0 |" in blank
    assert "| gates remove NOP sinks | -1 ± 0 (-1.00, -1.00, -1.00; p 0) | holds |" in blank  # sd 0: t infinite
    assert "| gated | 25% | - |" in blank  # one CLS event of four in layer 0; no events in layer 1


def test_the_claims_at_the_default_rule_and_the_cls_slope():
    from sink_models.paper.robustness import cls_slope, paired_t

    # least squares over the layers with sinks: x (0, 2, 3), y (0.5, 0.3, 0.1): Sxy -0.6, Sxx 42 / 9
    assert cls_slope([0.5, None, 0.3, 0.1]) == pytest.approx(-0.6 / (42 / 9))
    assert cls_slope([None, 0.4]) is None
    plain = {s: with_robustness(result("plain", s, top1=0.9, nop=0.5, broadcast=2.0 + s), 2.0) for s in range(3)}
    gated = {s: with_robustness(result("gated", s, top1=0.9, nop=0.1 * s, broadcast=3.0), 1.0) for s in range(3)}
    text = tables({"plain": plain, "gated": gated})
    claims = text.split("### The paper's claims at the default rule")[1].split("###")[0]
    # NOP: 0 - 0.5, 0.1 - 0.5, 0.2 - 0.5; without block 0 a quarter of each; no grid cell of the patch query set
    p = paired_t([-0.5, -0.4, -0.3])
    assert f"| gates remove NOP sinks | gated - plain, nop | -0.4 ± 0.1 (-0.50, -0.40, -0.30; p {p:.2g}) **holds** | " \
        f"-0.1 ± 0.025 (-0.12, -0.10, -0.07; p {p:.2g}) **holds** | - |" in claims  # fmt: skip
    assert "| the global pathway is more accurate |" not in claims  # no gp model
    depth = text.split("### CLS sinks early, patch sinks late?")[1].split("###")[0]
    # every model: layer 0 holds 3 CLS of 9 events, layer 1 none of 1: the slope is -1/3 in every seed (sd 0: p 0)
    assert "| plain | -0.333 (-0.333, -0.333, -0.333; p 0) | holds |" in depth

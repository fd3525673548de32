"""Causal interventions: NOP edits leave the outputs unchanged while broadcast edits move them, against an
independent forward; the built-in checks; sdpa == eager; every family and every edit; skips; two processes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate_intervene import EDITS, setup
from conftest import assert_nested_close, free_port, images, tiny_config
from families import CASES, build, inputs
from reference import reference_tokens

from sink_models import SinkViTModel
from sink_models.diagnostics import Thresholds, diagnose
from sink_models.errors import InputError
from sink_models.interventions import EDITS as ALL_EDITS
from sink_models.interventions import InterventionReport, intervene, select_heads

EVERYTHING = Thresholds(event=0.0)  # every (image, head) a sink event: every edit runs on every image
SCRIPT = Path(__file__).with_name("accelerate_intervene.py")


def rows_of(report, **where):
    return [row for row in report.rows if all(row[key] == value for key, value in where.items())]


def test_nop_edits_change_nothing_and_broadcast_edits_move_every_token():
    model, batches = setup()
    report = intervene(model, batches, heads=[(0, 0), (0, 2)], edits=ALL_EDITS)
    for edit in ("zero_sink_value", "mean_sink_value", "donor_sink_value", "gate_open"):
        nop = rows_of(report, head=0, edit=edit)
        assert len(nop) == 12 and all(row["class"] == "nop" for row in nop)
        assert max(row["final_patch_relrms"] for row in nop) < 1e-6, edit
    for edit in ("zero_sink_value", "redirect_sink_attention", "gate_closed"):
        broadcast = rows_of(report, head=2, edit=edit)
        assert len(broadcast) == 12 and all(row["class"] == "broadcast" for row in broadcast)
        assert min(row["final_patch_relrms"] for row in broadcast) > 0.1, edit
        assert min(row["common_energy"] for row in broadcast) > 0.5  # the change is shared by every patch
    # The sink's value is the same in every image (a prefix token): mean and donor values leave it unchanged.
    assert max(row["final_patch_relrms"] for row in rows_of(report, head=2, edit="donor_sink_value")) < 1e-6
    # The planted NOP head's attention to the rest underflows to 0: after the paper's renormalisation (clamped at
    # 1e-12) redirecting leaves the head's output at 0, as the sink's zero value did.
    assert max(row["final_patch_relrms"] for row in rows_of(report, head=0, edit="redirect_sink_attention")) < 1e-6
    assert report.checks["local_identity_max"] < 1e-8 and report.checks["noop_max"] < 1e-6
    assert report.checks["checked_heads"] == ["0:0", "0:2"]


def test_zeroing_a_sink_value_equals_the_independent_forward():
    """zero_sink_value on head 0 of a layer against tests/reference.py, which zeroes that value in its own forward."""
    torch.manual_seed(0)
    model = SinkViTModel(tiny_config("gated-reg")).eval()
    x = images(model.config, batch=3)
    report = intervene(model, [x], heads=[(1, 0)], edits=["zero_sink_value"], thresholds=EVERYTHING)
    rows = sorted(report.rows, key=lambda row: row["image"])
    sinks = torch.tensor([row["sink"] for row in rows])
    before = reference_tokens(model, x)["last_hidden_state"]
    after = reference_tokens(model, x, zero_values={1: sinks})["last_hidden_state"]
    prefix = model.config.num_prefix_tokens
    for row in rows:
        i = row["image"]
        keep = [j for j in range(prefix, before.shape[1]) if j != row["sink"]]
        change = (after[i, keep] - before[i, keep]).square().sum(-1).mean().sqrt()
        expected = float(change / before[i, keep].square().sum(-1).mean().sqrt())
        assert row["final_patch_relrms"] == pytest.approx(expected, rel=1e-4)
        assert expected > 1e-4  # the edit did something, so the equality means something
    assert [row["sink"] for row in rows] == [int(s) for s in sinks]


@pytest.mark.parametrize("name", [name for name in CASES if name not in ("vit", "dinov2")])
def test_every_edit_runs_on_every_family_with_its_checks(name):
    model = build(name)
    x = inputs(name, batch=3)
    report = intervene(model, [x], heads=[(1, 0), (1, 3)], edits=ALL_EDITS, thresholds=EVERYTHING)
    applicable = [e for e in ALL_EDITS if not e.startswith("gate") and e != "register_mean"]
    for edit in applicable:
        assert len(rows_of(report, edit=edit)) == 6, edit  # 3 images x 2 heads
    registers = CASES[name].registers
    assert len(rows_of(report, edit="register_mean")) == (3 * 2 if registers else 0)  # 3 images x 2 layers
    assert any("no attention gate" in entry for entry in report.skipped["edits_not_applicable"])
    assert report.checks["local_identity_max"] < 1e-8 and report.checks["noop_max"] < 1e-5
    for row in report.rows:
        assert row["final_patch_relrms"] is not None and row["final_patch_relrms"] >= 0


def test_sdpa_and_eager_give_the_same_numbers():
    model, batches = setup()
    sdpa = intervene(model, batches, heads=[(0, 0), (0, 2), (1, 1)], edits=EDITS)
    model.set_attn_implementation("eager")
    eager = intervene(model, batches, heads=[(0, 0), (0, 2), (1, 1)], edits=EDITS)
    assert len(sdpa.rows) == len(eager.rows) > 0
    moved = 0
    for a, b in zip(sdpa.rows, eager.rows, strict=True):
        if max(a["final_patch_relrms"], b["final_patch_relrms"]) < 1e-6:
            continue  # a NOP edit: a change of float rounding, whose direction and shares are noise
        moved += 1
        assert_nested_close(a, b, rel=1e-4, abs=1e-6, where=f"{a['edit']} {a['layer']}.{a['head']}")
    assert moved >= 20  # the broadcast head's zeroing and redirecting, and the register means


def test_heads_and_images_without_events_are_skipped_and_counted():
    model, batches = setup()
    report = intervene(model, batches, heads=[(0, 0), (1, 1)], edits=["zero_sink_value"])
    assert report.skipped["heads_without_events"] == ["1:1"]  # layer 1's random heads form no sink
    assert report.skipped["images_without_event"] == {"0:0": 0, "1:1": 12}
    assert {(row["layer"], row["head"]) for row in report.rows} == {(0, 0)}
    assert report.heads == [
        {"layer": 0, "head": 0, "nop": 12, "broadcast": 0, "other": 0},
        {"layer": 1, "head": 1, "nop": 0, "broadcast": 0, "other": 0},
    ]


def test_heads_are_selected_from_the_model_s_own_diagnostics():
    model, batches = setup()
    report = diagnose(model, batches)
    assert select_heads(report) == [(0, 0), (0, 2)]  # block 0 holds both planted heads: one per class
    chosen = intervene(model, batches, edits=["zero_sink_value"])
    assert {(row["layer"], row["head"]) for row in chosen.rows} == {(0, 0), (0, 2)}


def test_the_per_class_table_averages_over_heads(tmp_path):
    model, batches = setup()
    report = intervene(model, batches, heads=[(0, 0), (0, 2)], edits=["zero_sink_value", "redirect_sink_attention"])
    entries = {(e["class"], e["edit"]): e for e in report.by_class()}
    broadcast = entries["broadcast", "zero_sink_value"]
    values = [row["final_patch_relrms"] for row in rows_of(report, head=2, edit="zero_sink_value")]
    assert broadcast["mean"] == pytest.approx(sum(values) / len(values)) and broadcast["heads"] == 1
    assert broadcast["events"] == 12 and broadcast["sd"] is None
    table = report.table()
    assert table.splitlines()[0] == "| edit (final_patch_relrms) | nop | broadcast |"
    assert f"| zero_sink_value | {entries['nop', 'zero_sink_value']['mean']:.3g} (1 / 12) |" in table
    assert InterventionReport.from_json(report.to_json(tmp_path / "r.json")) == report


def test_labels_give_the_top1_change_and_logits_the_kl():
    model, batches = setup()
    report = intervene(model, batches, heads=[(0, 2)], edits=["zero_sink_value"])
    for row in report.rows:
        assert row["kl"] >= 0 and row["top1_agree"] in (0.0, 1.0) and row["top1_change"] in (-1.0, 0.0, 1.0)
    bare = intervene(model, [batch["pixel_values"] for batch in batches], heads=[(0, 2)], edits=["zero_sink_value"])
    assert all(row["top1_change"] is None and row["kl"] is not None for row in bare.rows)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, b: intervene(m, b, edits=["zero"]), "edits: got \\['zero'\\]; allowed: a non-empty list from"),
        (lambda m, b: intervene(m, b, edits=[]), "edits: got \\[\\]"),
        (lambda m, b: intervene(m, b, heads=[(9, 0)]), "heads: \\(9, 0\\) is outside the model's 2 layers x 4 heads"),
        (lambda m, b: intervene(m, b, heads=[(0.5, 1)]), "heads: got \\(0.5, 1\\); allowed: \\(layer, head\\) pairs"),
    ],
)
def test_bad_input(call, message):
    model, batches = setup()
    with pytest.raises(ValueError, match=message):
        call(model, batches)


def test_two_processes_give_the_single_process_report(tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
        str(SCRIPT), str(tmp_path / "report.json"),
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(SCRIPT.parent), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=SCRIPT.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = InterventionReport.from_json(tmp_path / "report.json")
    model, batches = setup()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = intervene(model, batches, edits=EDITS)
    finally:
        torch.set_num_threads(threads)
    assert len(distributed.rows) == len(single.rows) > 0
    key = lambda row: (row["image"], row["layer"], str(row["head"]), row["edit"])  # noqa: E731
    assert_nested_close(sorted(distributed.rows, key=key), sorted(single.rows, key=key), rel=1e-9, where="rows")
    for name in ("heads", "checks", "skipped", "settings"):
        assert_nested_close(getattr(distributed, name), getattr(single, name), rel=1e-9, where=name)


@pytest.mark.parametrize("name", ["dinov3", "beit"])  # RoPE; a relative-position bias in the logits
def test_planted_heads_of_stock_models(name):
    from test_families import plant as plant_stock

    model = build(name)
    x = inputs(name, batch=4)
    target = CASES[name].cls + CASES[name].registers - 1
    plant_stock(model, name, x, head=1, target=target, kind="nop")
    plant_stock(model, name, x, head=3, target=0, kind="broadcast")
    report = intervene(model, [x], heads=[(0, 1), (0, 3)], edits=["zero_sink_value", "gate_closed"])
    nop, broadcast = rows_of(report, head=1), rows_of(report, head=3)
    assert len(nop) == len(broadcast) == 4 and {r["class"] for r in nop} == {"nop"}
    assert {r["class"] for r in broadcast} == {"broadcast"}
    assert max(row["final_patch_relrms"] for row in nop) < 1e-6
    assert min(row["final_patch_relrms"] for row in broadcast) > 0.05
    assert report.skipped["edits_not_applicable"] == [
        "gate_closed on 0:1: the model has no attention gate",
        "gate_closed on 0:3: the model has no attention gate",
    ]


@pytest.mark.parametrize("direction", ["all patches", "without sinks"])
def test_the_donor_cosine_takes_its_direction_as_asked(direction):
    """cos(mean change over the patches but the sink, mean P_donor - mean P_own), the two means over every patch (the
    paper's) or each without its own image's sink; written out per image with numpy."""
    from types import SimpleNamespace

    from sink_models.interventions.edits import Choices
    from sink_models.interventions.measure import Baseline, effects

    generator = torch.Generator().manual_seed(0)
    before, after = torch.randn(3, 7, 5, generator=generator), torch.randn(3, 7, 5, generator=generator)
    sink = torch.tensor([2, 5, 0])  # patch sinks in images 0 and 1, a CLS sink in image 2 (prefix: 2 tokens)
    donor = torch.tensor([1, 2, 0])
    chosen = Choices(sink, donor, sink[donor], sink, sink)
    adapter = SimpleNamespace(num_prefix_tokens=2)
    got = effects(Baseline(before, None, None, None), {"tokens": after, "logits": None}, adapter, chosen, direction)
    b, a = before.double().numpy(), after.double().numpy()
    for i in range(3):
        changed = [j for j in range(2, 7) if j != sink[i]]
        mean_change = (a[i, changed] - b[i, changed]).mean(0)

        def mean_patch(image):
            kept = [j for j in range(2, 7) if direction == "all patches" or j != sink[image]]
            return b[image, kept].mean(0)

        towards = mean_patch(int(donor[i])) - mean_patch(i)
        expected = mean_change @ towards / np.linalg.norm(mean_change) / np.linalg.norm(towards)
        assert float(got["donor_cosine"][i]) == pytest.approx(expected, abs=1e-12)
    other = "without sinks" if direction == "all patches" else "all patches"
    again = effects(Baseline(before, None, None, None), {"tokens": after, "logits": None}, adapter, chosen, other)
    assert not torch.allclose(again["donor_cosine"][:2], got["donor_cosine"][:2])  # patch sinks: the two differ


def test_ties_at_the_selection_cut_follow_the_paper_or_keep_the_earlier_head():
    from sink_models.diagnostics import SinkReport

    counts = {(1, 0): 5, (1, 1): 3, (2, 0): 3, (2, 3): 3, (0, 1): 2, (0, 2): 2}  # three heads tie at 3 for two places
    heads = [{"layer": lh[0], "head": lh[1], "nop": n, "broadcast": 0} for lh, n in counts.items()]
    report = SinkReport({}, heads, [], [], {}, {})
    # the paper's sort of (count, layer, head), descending: the later of equal heads wins
    assert select_heads(report, per_class=2) == [(0, 2), (1, 0), (2, 3)]
    assert select_heads(report, per_class=2, ties="lower") == [(0, 1), (1, 0), (1, 1)]
    with pytest.raises(InputError, match=r"^ties: got 'higher'; allowed: paper, lower.$"):
        select_heads(report, ties="higher")

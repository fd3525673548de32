import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sink_models import preset_config

BENCH = Path(__file__).parents[1] / "bench" / "model.py"
DIAGNOSTICS_BENCH = Path(__file__).parents[1] / "bench" / "diagnostics.py"


def load_bench(path: Path = BENCH):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speedup_is_the_median_of_per_round_ratios():
    bench = load_bench()
    times = {"peer": [1.0, 2.0, 4.0], "fast": [0.5, 2.0, 2.0]}  # rounds where load doubled the peer's time
    assert bench.speedup(times, "fast", "peer") == 2.0  # ratios 2, 1, 2
    assert bench.speedup(times, "peer", "peer") == 1.0


def test_forward_flops_of_vit_tiny():
    bench = load_bench()
    config = preset_config("plain", "tiny")
    # By hand: patch embedding 196 x 768 x 192 MACs; per layer 197 x (4 x 192^2 + 2 x 192 x 768) + 2 x 197^2 x 192.
    macs = 196 * 768 * 192 + 12 * (197 * (4 * 192**2 + 2 * 192 * 768) + 2 * 197**2 * 192)
    assert bench.forward_flops(config, tokens=197, patches=196) == 2 * macs
    gated = preset_config("gated", "tiny")
    assert bench.forward_flops(gated, 197, 196) - 2 * macs == 2 * 12 * 197 * 192 * 192


def test_model_benchmark_prints_a_row_per_model_and_the_targets():
    result = subprocess.run(
        [sys.executable, str(BENCH), "--size", "toy", "--batch", "2", "--reps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^(transformers ViT|SinkViT [\w ,-]+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line)
        if match:
            rows[match.group(1)] = [float(v) for v in match.groups()[1:]]
    expected = ["transformers ViT", "SinkViT plain, no LayerScale"]
    expected += [f"SinkViT {v}" for v in ("plain", "gated-headwise", "gated", "reg", "gated-reg")]
    assert list(rows) == expected
    assert rows["transformers ViT"][1] == 1.0 and rows["transformers ViT"][3] == 1.0
    # With one round, a ratio is exactly the ratio of the two throughputs (up to the printed rounding).
    peer_forward, _, peer_train, _ = rows["transformers ViT"]
    for forward, forward_ratio, train, train_ratio in rows.values():
        for speed, ratio, peer in ((forward, forward_ratio, peer_forward), (train, train_ratio, peer_train)):
            assert ratio == pytest.approx(speed / peer, abs=5e-4 + speed / peer * (0.05 / speed + 0.05 / peer))
    for label in ("forward", "train"):
        assert re.search(rf"{label} *: plain vs ViT [\d.]+ \(target >= 0.95: (met|MISSED)\)", result.stdout)


def test_diagnostics_benchmark_plants_twelve_sinks_per_image_at_vit_tiny_size():
    bench = load_bench(DIAGNOSTICS_BENCH)
    model, x = bench.setup("tiny", batch=2, sinks=True)
    summary = bench.diagnose(model, [x]).summary
    assert summary["sinks_per_image"] == 12 and summary["nop_per_image"] == summary["broadcast_per_image"] == 6
    assert summary["sink_share"]["patch"] == 0 and summary["sink_share"]["cls"] > 0
    assert bench.agreement(model, x) == (2 * 12 * 3, 2 * 12, pytest.approx(0, abs=1e-4))  # records, events, worst


def test_diagnostics_benchmark_prints_both_cases_and_the_targets(monkeypatch, capsys):
    bench = load_bench(DIAGNOSTICS_BENCH)
    # A fresh process per method and case measures peak memory (tested below): a stand-in here keeps this quick.
    monkeypatch.setattr(bench, "peak_memory", lambda size, batch, sinks, method, family="sink_vit": 15.0)
    monkeypatch.setattr(sys, "argv", ["diagnostics.py", "--size", "toy", "--batch", "2", "--reps", "1"])
    bench.main()
    out = capsys.readouterr().out
    methods = ("sdpa forward", "eager forward + attentions", "paper procedure", "diagnose", "diagnose, all events")
    rows = [m for line in out.splitlines() for m in methods if re.match(rf"{re.escape(m)} +[\d.]+ ", line)]
    stock = [m for m in methods if m != "paper procedure"]  # the DINOv3 case: the paper procedure is SinkViT's
    assert rows == list(methods) * 2 + stock
    assert "no sinks (random model): 0.00 sink events per image" in out
    # The toy model has 4 layers: one planted sink head each, NOP and broadcast in turn.
    assert "planted sinks: 4.00 sink events per image (2.00 NOP, 2.00 broadcast, 0.00 other" in out
    assert len(re.findall(r"diagnose vs paper procedure: [\d.]+x faster \(>= 3x: (met|MISSED)\)", out)) == 2
    assert len(re.findall(r"diagnose memory over sdpa forward: 0.0 MiB \(<= one layer's maps", out)) == 3
    assert "DINOv3 (64 wide, 4 layers, random): " in out
    figures = json.loads(out.splitlines()[-1])
    assert list(figures) == ["no sinks", "sinks", "dinov3"]
    assert [case["sinks_per_image"] for case in figures.values()][:2] == [0, 4]
    assert all(case["worst"] <= 1e-4 for case in list(figures.values())[:2])


def test_diagnostics_benchmark_measures_peak_memory_in_a_fresh_process(monkeypatch):
    monkeypatch.chdir(DIAGNOSTICS_BENCH.parents[1])  # that process imports bench/diagnostics.py
    bench = load_bench(DIAGNOSTICS_BENCH)
    assert 0 <= bench.peak_memory("toy", 2, True, "diagnose") < 50


def test_interventions_benchmark_prints_both_models_and_its_checks(monkeypatch, capsys):
    bench = load_bench(Path(__file__).parents[1] / "bench" / "interventions.py")
    monkeypatch.setattr(sys, "argv", ["interventions.py", "--size", "toy", "--batch", "2", "--reps", "1"])
    bench.main()
    out = capsys.readouterr().out
    for name in ("SinkViT", "DINOv3"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert re.search(r"pass [\d.]+ s: [\d.]+x one forward; 29 forwards, so [\d.]+x per edited forward", line)
        assert "(48 rows, local identity" in line  # 2 images x 4 heads x 6 edits, every image an event
    figures = json.loads(out.splitlines()[-1])
    assert list(figures) == ["SinkViT", "DINOv3"]
    for case in figures.values():
        assert case["per_forward"] == pytest.approx(case["ratio"] / case["forwards"])

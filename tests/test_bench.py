import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

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


def test_data_benchmark_prints_a_row_per_worker_count_and_the_workers_a_gpu_needs(monkeypatch, capsys):
    bench = load_bench(Path(__file__).parents[1] / "bench" / "data.py")
    argv = ["data.py", "--images", "8", "--batch", "4", "--workers", "0", "1", "--size", "toy", "--rounds", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--gpu-rate", "1000"])
    bench.main()
    out = capsys.readouterr().out
    figures = json.loads(out.splitlines()[-1])
    rates = {int(workers): rate for workers, rate in figures["rates"].items()}
    assert list(rates) == [0, 1] and all(rate > 0 for rate in rates.values())
    for workers, rate in rates.items():
        assert re.search(rf"^ +{workers} +{rate:.1f} +{rate / rates[0]:.2f} +{rate / figures['step']:.2f}$", out, re.M)
    assert figures["per_worker"] == pytest.approx(max(rates[0], rates[1]))
    assert figures["workers_needed"] == math.ceil(1000 / figures["per_worker"])
    assert f"needs about {figures['workers_needed']} workers" in out


def test_data_benchmark_images_are_imagenet_sized_jpegs(tmp_path):
    bench = load_bench(Path(__file__).parents[1] / "bench" / "data.py")
    bench.make_images(tmp_path, 3)
    files = sorted(tmp_path.rglob("*.jpg"))
    assert [f.parent.name for f in files] == ["class0", "class0", "class1"]
    for path in files:
        with Image.open(path) as image:
            assert image.size == (500, 375) and image.format == "JPEG"


def test_gpu_benchmark_tiny_mode_prints_every_model_and_consistent_figures(monkeypatch, capsys):
    bench = load_bench(Path(__file__).parents[1] / "bench" / "gpu.py")
    # One round: a ratio (the median of per-round ratios) is then exactly the ratio of the two throughputs.
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--tiny", "--reps", "1"])
    bench.main()
    out = capsys.readouterr().out
    models = ["transformers ViT"] + [f"SinkViT {v}" for v in ("plain", "gated", "reg", "gated-reg")]
    row = rf"^toy +(\S+) +no +(\w+) +({'|'.join(models)}) +[\d.]+ +[\d.]+ +([\d.]+|-) +([\d.]+|-)$"
    rows = [match.groups()[:3] for line in out.splitlines() if (match := re.match(row, line))]
    modes = ("forward", "train", "diagnose")
    assert [r for r in rows if r[0] == "sdpa"] == [("sdpa", mode, model) for mode in modes for model in models]
    figures = json.loads(out.splitlines()[-1])
    assert figures["skipped"] == [] and figures["failed"] == {}
    if "flash_attention_2" in figures["unavailable"]:  # always on CPU: the reason is printed once
        assert re.search(r"^flash_attention_2: unavailable, skipped \(\w+: .+\)$", out, re.MULTILINE)
    assert len(figures["cases"]) == len({r[:2] for r in rows})
    for case in figures["cases"]:
        assert list(case["models"]) == models
        peer = case["models"]["transformers ViT"]["images_per_s"]
        for model in case["models"].values():
            assert model["images_per_s"] > 0 and model["ratio"] == pytest.approx(model["images_per_s"] / peer)
    diagnosed = figures["cases"][2]
    assert diagnosed["mode"] == "diagnose" and all(m["x_forward"] > 0 for m in diagnosed["models"].values())


def test_gpu_benchmark_refuses_in_one_line_without_a_gpu_or_tiny(monkeypatch, capsys):
    bench = load_bench(Path(__file__).parents[1] / "bench" / "gpu.py")
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)  # so it refuses on a CUDA machine too
    monkeypatch.setattr(sys, "argv", ["gpu.py"])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    message = str(exit_info.value.code)
    assert "no CUDA GPU" in message and "--tiny" in message and "\n" not in message
    assert capsys.readouterr().out == ""  # refused before any work


def test_probe_benchmark_checks_both_losses_agree_and_prints_the_ratio(monkeypatch, capsys):
    bench = load_bench(Path(__file__).parents[1] / "bench" / "probe.py")
    monkeypatch.setattr(sys, "argv", ["probe.py", "--patches", "500", "--rounds", "2"])
    bench.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"500 patches x 64 channels, 11 classes; {torch.get_num_threads()} threads"
    rows = [re.match(r"\| (.+) \| ([\d.]+) \| ([\d.]+) \|$", line) for line in lines[3:]]
    names = ["F.cross_entropy (patches x classes)", "_cross_entropy (classes x patches)"]
    assert [row.group(1) for row in rows] == names
    assert float(rows[0].group(3)) == 1.0 and float(rows[1].group(3)) > 0

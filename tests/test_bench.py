import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench" / "model.py"


def test_model_benchmark_prints_a_ratio_row_per_model():
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
    # The peer's ratio against itself is 1 in both columns; every other row is throughput / peer throughput.
    assert rows["transformers ViT"][1] == 1.0 and rows["transformers ViT"][3] == 1.0
    peer_forward, _, peer_train, _ = rows["transformers ViT"]
    for forward, forward_ratio, train, train_ratio in rows.values():
        for speed, ratio, peer in ((forward, forward_ratio, peer_forward), (train, train_ratio, peer_train)):
            # Throughputs are printed to 0.1 img/s and ratios to 0.001: allow exactly that rounding.
            assert ratio == pytest.approx(speed / peer, abs=5e-4 + speed / peer * (0.05 / speed + 0.05 / peer))
    assert re.search(r"forward: plain vs ViT [\d.]+ \(target >= 0.95: (met|MISSED)\)", result.stdout)

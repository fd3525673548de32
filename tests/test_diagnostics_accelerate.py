import os
import subprocess
import sys
from pathlib import Path

import torch
from accelerate_diagnose import setup
from conftest import free_port
from test_diagnostics import assert_reports_equal

from sink_models.diagnostics import SinkReport, diagnose

SCRIPT = Path(__file__).with_name("accelerate_diagnose.py")


def test_two_processes_give_the_single_process_report(tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
        str(SCRIPT), str(tmp_path / "report.json"),
    ]  # fmt: skip
    # On CPU, accelerate 1.x starts real processes only with ACCELERATE_USE_CPU=1 (else each runs alone).
    env = os.environ | {"PYTHONPATH": str(SCRIPT.parent), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=SCRIPT.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = SinkReport.from_json(tmp_path / "report.json")

    model, batches, thresholds = setup()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process: the same float32 kernels, the same roundings
    try:
        single = diagnose(model, batches, thresholds=thresholds)
    finally:
        torch.set_num_threads(threads)
    assert distributed.summary["images"] == single.summary["images"] == 15
    assert len(distributed.events) == len(single.events) == 15 * 2 * 4
    # Sums may be added up in another order across processes: equal to float64 rounding.
    assert_reports_equal(distributed, single, rel=1e-12)

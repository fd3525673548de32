"""Run by test_diagnostics_accelerate.py under `accelerate launch`: each process diagnoses its contiguous shard."""

import sys

import torch
from accelerate import Accelerator
from conftest import images, tiny_config

from sink_models import SinkViTForImageClassification
from sink_models.diagnostics import Thresholds, diagnose
from sink_models.processes import exit_launched

BATCHES = 5


def setup():
    torch.manual_seed(0)
    model = SinkViTForImageClassification(tiny_config("gated-reg", layerscale_init=0.7)).eval()
    batches = [images(model.config, batch=3, seed=i) for i in range(BATCHES)]
    return model, batches, Thresholds(event=0.0)


if __name__ == "__main__":
    accelerator = Accelerator()
    assert accelerator.num_processes == 2, "launched without ACCELERATE_USE_CPU=1? (then each process runs alone)"
    model, batches, thresholds = setup()
    share = -(-BATCHES // accelerator.num_processes)  # uneven: 3 batches, then 2
    mine = batches[accelerator.process_index * share : (accelerator.process_index + 1) * share]
    # A prepared (DistributedDataParallel-wrapped) model is what accelerate users hold.
    report = diagnose(accelerator.prepare(model), mine, thresholds=thresholds, accelerator=accelerator)
    if accelerator.is_main_process:
        report.to_json(sys.argv[1])
    accelerator.wait_for_everyone()
    exit_launched(0)

"""Run by test_interventions.py under `accelerate launch`: each process intervenes on its own whole batches."""

import sys

import torch
from accelerate import Accelerator
from conftest import images, tiny_config
from planted import plant

from sink_models import SinkViTForImageClassification
from sink_models.interventions import intervene
from sink_models.processes import exit_launched

BATCHES = 3
EDITS = ("zero_sink_value", "mean_sink_value", "donor_sink_value", "redirect_sink_attention", "register_mean")


def setup():
    """A tiny gated SinkViT with a NOP head (0) on CLS and a broadcast head (2) on a register in layer 0, and batches
    with labels."""
    torch.manual_seed(0)
    model = SinkViTForImageClassification(tiny_config("gated-reg", num_labels=3)).eval()
    with torch.no_grad():
        for parameter in (model.sink_vit.embeddings.cls_token, model.sink_vit.embeddings.register_tokens):
            parameter.normal_()
    x = images(model.config, batch=4)
    plant(model, x, head=0, target=0, kind="nop")
    plant(model, x, head=2, target=1, kind="broadcast")
    batches = [
        {"pixel_values": images(model.config, batch=4, seed=i), "labels": torch.arange(4) % 3} for i in range(BATCHES)
    ]
    return model, batches


if __name__ == "__main__":
    accelerator = Accelerator()
    assert accelerator.num_processes == 2, "launched without ACCELERATE_USE_CPU=1? (then each process runs alone)"
    model, batches = setup()
    mine = batches[:2] if accelerator.process_index == 0 else batches[2:]
    report = intervene(accelerator.prepare(model), mine, edits=EDITS, accelerator=accelerator)
    if accelerator.is_main_process:
        report.to_json(sys.argv[1])
    accelerator.wait_for_everyone()
    exit_launched(0)

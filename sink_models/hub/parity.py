"""`python -m sink_models.hub.parity STAGED LOCAL`: load STAGED through trust_remote_code (its own code files, as a Hub
user would) and LOCAL with this library, and print {"max_abs_diff": ...} of their logits on fixed random images.

Run in a fresh process by `sink_models.hub.publish.parity_check`, so that no class already imported can stand in for the
staged code.
"""

import json
import sys

import torch
from transformers import AutoModelForImageClassification

from ..configuration_sink_vit import as_pair
from ..modeling_sink_vit import SinkViTForImageClassification


def max_logit_difference(staged: str, local: str) -> float:
    remote = AutoModelForImageClassification.from_pretrained(staged, trust_remote_code=True).eval()
    if not type(remote).__module__.startswith("transformers_modules"):
        raise SystemExit(f"{staged}: loaded {type(remote).__module__}, not the folder's own code")
    ours = SinkViTForImageClassification.from_pretrained(local).eval()
    height, width = as_pair(ours.config.image_size)
    images = torch.randn(4, ours.config.num_channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((remote(images).logits - ours(images).logits).abs().max())


if __name__ == "__main__":
    print(json.dumps({"max_abs_diff": max_logit_difference(sys.argv[1], sys.argv[2])}))

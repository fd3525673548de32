"""What an edit did: the paper's effects on the final patch tokens and, with a classification head, on the logits."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Baseline:
    """The unedited forward of a batch: final tokens (batch, N, C), logits (or None), labels (or None) and the
    tokens that count (None: all)."""

    tokens: torch.Tensor
    logits: torch.Tensor | None
    labels: torch.Tensor | None
    valid: torch.Tensor | None

    @classmethod
    def of(cls, outputs: dict, valid, labels) -> "Baseline":
        labels = None if labels is None else labels.to(outputs["tokens"].device)
        return cls(outputs["tokens"], outputs["logits"], labels, valid)


def patch_mask(baseline: Baseline, first: int, sink: torch.Tensor | None) -> torch.Tensor:
    """(batch, N): the patch tokens that count, without each image's sink token."""
    batch, tokens = baseline.tokens.shape[:2]
    mask = torch.zeros(batch, tokens, dtype=torch.bool, device=baseline.tokens.device)
    mask[:, first:] = True
    if baseline.valid is not None:
        mask &= baseline.valid.to(mask.device)
    if sink is not None:
        mask[torch.arange(batch, device=mask.device), sink.to(mask.device)] = False
    return mask


DONOR_DIRECTIONS = ("all patches", "without sinks")


def effects(
    baseline: Baseline, outputs: dict, adapter, chosen, donor_direction: str = "all patches"
) -> dict[str, torch.Tensor | None]:
    """Per image: final_patch_relrms = sqrt(mean_i ||P'_i - P_i||^2) / sqrt(mean_i ||P_i||^2) over the patches
    without the sink; common_energy = ||mean_i dP_i||^2 / mean_i ||dP_i||^2, the share of the change that every patch
    gets; donor_cosine = cos(mean_i dP_i, mean P_donor - mean P_own), the two means over all patches (the paper's
    direction) or, `donor_direction="without sinks"`, each without its image's sink; and from the logits (with a
    head): the KL divergence from the baseline's prediction, top-1 agreement with it and, with labels, the top-1
    accuracy change."""
    mask = patch_mask(baseline, adapter.num_prefix_tokens, None if chosen is None else chosen.sink).float()
    count = mask.sum(-1)
    before, after = baseline.tokens.double(), outputs["tokens"].double()
    change = (after - before) * mask[..., None]
    energy = change.square().sum(-1).sum(-1) / count
    scale = (before.square().sum(-1) * mask).sum(-1) / count
    mean_change = change.sum(1) / count[:, None]
    measured = {
        "final_patch_relrms": (energy / scale).sqrt(),
        "common_energy": torch.where(energy > 0, mean_change.square().sum(-1) / energy.clamp_min(1e-300), torch.nan),
        "donor_cosine": None,
    }
    if chosen is not None:
        every = patch_mask(baseline, adapter.num_prefix_tokens, None).float()
        means = mask if donor_direction == "without sinks" else every
        own = (before * means[..., None]).sum(1) / means.sum(-1)[:, None]
        direction = own[chosen.donor] - own
        cosine = F.cosine_similarity(mean_change, direction, dim=-1)
        measured["donor_cosine"] = torch.where(energy > 0, cosine, torch.nan)  # no change: no direction
    measured |= _logit_effects(baseline, outputs)
    return measured


def _logit_effects(baseline: Baseline, outputs: dict) -> dict:
    if baseline.logits is None or outputs["logits"] is None:
        return {"kl": None, "top1_agree": None, "top1_change": None}
    before, after = baseline.logits.double().log_softmax(-1), outputs["logits"].double().log_softmax(-1)
    agree = (before.argmax(-1) == after.argmax(-1)).double()
    change = None
    if baseline.labels is not None:
        change = (after.argmax(-1) == baseline.labels).double() - (before.argmax(-1) == baseline.labels).double()
    return {"kl": (before.exp() * (before - after)).sum(-1), "top1_agree": agree, "top1_change": change}

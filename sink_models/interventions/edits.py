"""The paper's single-head edits (SCIENCE.md section 8), on one head's attention A (batch, N, N) and values v
(batch, N, d_h) with A held fixed: what each edit puts in place of the sink's value or attention, and the float64
check that a value edit changes the head's update by exactly A_{:,p} (u'_p - u_p) at the patched token p."""

from dataclasses import dataclass

import torch

from ..errors import InputError

# The paper's order (Figure 6): the four value replacements, removing the attention, and the control.
HEAD_EDITS = (
    "zero_sink_value",
    "mean_sink_value",
    "donor_sink_value",
    "donor_nonsink_value",
    "redirect_sink_attention",
    "zero_random_nonsink_value",
)
VALUE_EDITS = tuple(edit for edit in HEAD_EDITS if edit != "redirect_sink_attention")
GATE_EDITS = ("gate_closed", "gate_open")  # gated models: force the head's gate shut or fully open
LAYER_EDITS = ("register_mean",)  # registers of a layer's input replaced by their held-out mean
EDITS = (*HEAD_EDITS, *GATE_EDITS, *LAYER_EDITS)
DEFAULT_EDITS = HEAD_EDITS


@dataclass
class Choices:
    """Per image of a batch: its sink, its donor (the next image), the donor's sink, a random patch other than the
    image's sink and one other than the donor's, and the head's held-out mean sink value (None if not measured)."""

    sink: torch.Tensor
    donor: torch.Tensor
    donor_sink: torch.Tensor
    own_patch: torch.Tensor
    donor_patch: torch.Tensor
    mean: torch.Tensor | None = None


def choices(sink: torch.Tensor, patches: tuple[int, torch.Tensor], generator: torch.Generator, mean=None) -> Choices:
    """The images' edit choices; `patches` is (first patch index, each image's number of patches)."""
    images = torch.arange(len(sink), device=sink.device)
    donor = images.roll(-1)
    first, counts = patches
    return Choices(
        sink,
        donor,
        sink[donor],
        random_patch_not(sink, first, counts, generator),
        random_patch_not(sink[donor], first, counts[donor], generator),
        mean,
    )


def random_patch_not(avoid: torch.Tensor, first: int, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random patch index per image (first <= j < first + count), never `avoid`: the draw moves on by
    one patch, wrapping, when it hits it (the paper's rule)."""
    draw = torch.rand(len(avoid), generator=generator).to(avoid.device)
    offset = (draw * counts).long().clamp_max(counts - 1)
    shifted = (offset + 1) % counts
    return first + torch.where(first + offset == avoid, shifted, offset)


def apply_edit(
    name: str, attention: torch.Tensor, values: torch.Tensor, chosen: Choices
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(attention', values', patched token per image) of edit `name` on one head."""
    images = torch.arange(len(values), device=values.device)
    sink, patched = chosen.sink, chosen.sink
    edited = values.clone()
    if name == "zero_sink_value":
        edited[images, sink] = 0
    elif name == "mean_sink_value":
        if chosen.mean is None:
            raise InputError("mean_sink_value: the head has no held-out sink event to take a mean value from.")
        edited[images, sink] = chosen.mean.to(values.dtype)
    elif name == "donor_sink_value":
        edited[images, sink] = values[chosen.donor, chosen.donor_sink]
    elif name == "donor_nonsink_value":
        edited[images, sink] = values[chosen.donor, chosen.donor_patch]
    elif name == "zero_random_nonsink_value":
        edited[images, chosen.own_patch] = 0
        patched = chosen.own_patch
    elif name == "redirect_sink_attention":
        attention = attention.clone()
        attention[images, :, sink] = 0
        attention = attention / attention.sum(-1, keepdim=True).clamp_min(1e-12)
    elif name != "none":
        raise InputError(f"edits: no head edit {name!r}; allowed: {', '.join(HEAD_EDITS)}.")
    return attention, edited, patched


def local_identity_error(
    attention: torch.Tensor, values: torch.Tensor, edited: torch.Tensor, patched: torch.Tensor, projection: torch.Tensor
) -> float:
    """The largest relative error, in float64, between the change of the head's update U = A u (u = v M, M the head's
    output projection with LayerScale) and A_{:,p} (u'_p - u_p): zero unless the edit touched more than token p."""
    a = attention.double()
    before, after = values.double() @ projection, edited.double() @ projection
    change = a @ (after - before)
    images = torch.arange(len(values), device=values.device)
    predicted = a[images, :, patched][..., None] * (after - before)[images, patched][:, None, :]
    error = (change - predicted).flatten(1).norm(dim=-1)
    scale = predicted.flatten(1).norm(dim=-1)
    return float(torch.where(scale > 1e-12, error / scale.clamp_min(1e-30), error).max())

"""The paper's single-head edits (docs/science.md section 8), on one head's attention A (batch, N, N) and values v
(batch, N, d_h) with A held fixed: what each edit puts in place of the sink's value or attention, and the float64
check that a value edit changes the head's update by exactly A_{:,p} (u'_p - u_p) at the patched token p."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError

Edited = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (attention', values', patched token per image)


@dataclass(frozen=True)
class Edit:
    """One edit: its kind (`value` / `attention`: one head's values or attention, by `apply`; `gate`: the head's gate
    forced to `level` before the sigmoid; `layer`: a whole layer's tokens), its figure label, and whether it needs
    held-out means measured first."""

    kind: str
    label: str
    apply: Callable[[torch.Tensor, torch.Tensor, "Choices"], Edited] | None = None
    needs_mean: bool = False
    level: float | None = None


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


def _with_values(attention: torch.Tensor, values: torch.Tensor, at: torch.Tensor, new: torch.Tensor) -> Edited:
    """The head with token `at`'s value of each image replaced by `new` (0 for zero)."""
    edited = values.clone()
    edited[torch.arange(len(values), device=values.device), at] = new
    return attention, edited, at


def _mean_sink_value(attention: torch.Tensor, values: torch.Tensor, chosen: Choices) -> Edited:
    if chosen.mean is None:
        raise InputError("mean_sink_value: the head has no held-out sink event to take a mean value from.")
    return _with_values(attention, values, chosen.sink, chosen.mean.to(values.dtype))


def _redirect_sink_attention(attention: torch.Tensor, values: torch.Tensor, chosen: Choices) -> Edited:
    attention = attention.clone()
    attention[torch.arange(len(values), device=values.device), :, chosen.sink] = 0
    return attention / attention.sum(-1, keepdim=True).clamp_min(1e-12), values, chosen.sink


def _donor(values: torch.Tensor, chosen: Choices, token: torch.Tensor) -> torch.Tensor:
    return values[chosen.donor, token]


# The registry, in the paper's order (Figure 6): the four value replacements, removing the attention, the control;
# then the model-level edits. Gate levels are sigmoid inputs that give exactly 0 or 1 in float32.
EDITS_BY_NAME = {
    "zero_sink_value": Edit("value", "zero sink value", lambda a, v, c: _with_values(a, v, c.sink, 0)),
    "mean_sink_value": Edit("value", "head's mean sink value", _mean_sink_value, needs_mean=True),
    "donor_sink_value": Edit(
        "value", "donor's sink value", lambda a, v, c: _with_values(a, v, c.sink, _donor(v, c, c.donor_sink))
    ),
    "donor_nonsink_value": Edit(
        "value", "ordinary value at sink", lambda a, v, c: _with_values(a, v, c.sink, _donor(v, c, c.donor_patch))
    ),
    "redirect_sink_attention": Edit("attention", "remove attention to sink", _redirect_sink_attention),
    "zero_random_nonsink_value": Edit(
        "value", "zero a non-sink value (control)", lambda a, v, c: _with_values(a, v, c.own_patch, 0)
    ),
    "gate_closed": Edit("gate", "gate closed", level=-1e4),
    "gate_open": Edit("gate", "gate open", level=1e4),
    "register_mean": Edit("layer", "register mean", needs_mean=True),
}
EDITS = tuple(EDITS_BY_NAME)


def of_kind(*kinds: str) -> tuple[str, ...]:
    """The names of the edits of these kinds, in the registry's order."""
    return tuple(name for name, edit in EDITS_BY_NAME.items() if edit.kind in kinds)


HEAD_EDITS = of_kind("value", "attention")
DEFAULT_EDITS = HEAD_EDITS


def apply_edit(name: str, attention: torch.Tensor, values: torch.Tensor, chosen: Choices) -> Edited:
    """(attention', values', patched token per image) of head edit `name` (or `none`) on one head."""
    if name == "none":
        return attention, values.clone(), chosen.sink
    edit = EDITS_BY_NAME.get(name)
    if edit is None or edit.apply is None:
        raise InputError(f"edits: no head edit {name!r}; allowed: {', '.join(HEAD_EDITS)}.")
    return edit.apply(attention, values, chosen)


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

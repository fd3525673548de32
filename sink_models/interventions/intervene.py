"""`intervene`: edit one sink head at a time with its attention held fixed, run the rest of the network unchanged,
and measure how far the final patch tokens (and the logits) move (docs/science.md section 8; the paper's vit_causal)."""

from collections.abc import Iterable

import torch
from torch import nn

from ..diagnostics import Thresholds, diagnose
from ..diagnostics.capture import Adapter, Kernel, adapter_for, kernel_handlers
from ..diagnostics.diagnose import model_inputs, run_forward, valid_tokens
from ..diagnostics.report import finite_or_none
from ..errors import InputError
from ..vocabulary import CLASSES, TOKEN_TYPES
from .edits import (
    DEFAULT_EDITS,
    EDITS,
    EDITS_BY_NAME,
    apply_edit,
    choices,
    local_identity_error,
)
from .heads import head_attention, head_metrics, head_projection, head_view
from .means import held_out_means, inputs_on
from .measure import DONOR_DIRECTIONS, Baseline, effects
from .report import InterventionReport, by_position
from .select import select_heads


def intervene(
    model: nn.Module,
    batches: Iterable,
    *,
    heads: list[tuple[int, int]] | None = None,
    edits: Iterable[str] = DEFAULT_EDITS,
    held_out: Iterable | None = None,
    thresholds: Thresholds | None = None,
    per_class: int = 4,
    seed: int = 0,
    accelerator=None,
    donor_direction: str = "all patches",
) -> InterventionReport:
    """Edit each of `heads` ((layer, head) pairs; default: `select_heads` of the model's own diagnostics on `batches`)
    on every image of `batches` where it has a sink event, once per edit of `edits` (`edits.EDITS`), and measure the
    effects. `held_out` gives the images the head's mean sink value and the registers' mean are taken over (default:
    `batches` themselves; the paper uses disjoint images). Batches are dicts of model inputs, with `labels` if the
    top-1 change is wanted, or pixel tensors. The donor of an image is the next image of its batch; `donor_direction`
    ("all patches", the paper's, or "without sinks") says which patches the donor cosine's two means take.

    Under accelerate, give each process its own whole batches: the report is the single-process one."""
    thresholds = Thresholds() if thresholds is None else thresholds
    edits = _checked_edits(edits)
    if donor_direction not in DONOR_DIRECTIONS:
        raise InputError(f"donor_direction: got {donor_direction!r}; allowed: {', '.join(DONOR_DIRECTIONS)}.")
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    adapter = adapter_for(model)
    data = [_split(batch, adapter) for batch in batches]
    if heads is None:
        report = diagnose(model, [inputs for inputs, _ in data], thresholds=thresholds, accelerator=accelerator)
        heads = select_heads(report, per_class=per_class)
    heads = _checked_heads(heads, adapter)
    source = data if held_out is None else [_split(batch, adapter) for batch in held_out]
    sinks, registers = "mean_sink_value" in edits, "register_mean" in edits
    needs_means = any(EDITS_BY_NAME[edit].needs_mean for edit in edits)
    means = (
        held_out_means(model, adapter, source, heads, thresholds, accelerator, sinks, registers) if needs_means else {}
    )
    run = _Run(model, adapter, heads, edits, thresholds, means, seed, donor_direction)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index, (inputs, labels) in enumerate(data):
                run.batch(index, inputs, labels)
    finally:
        model.train(training)
    return InterventionReport.collect(run, accelerator)


def _checked_edits(edits: Iterable[str]) -> tuple[str, ...]:
    edits = tuple(edits)
    unknown = [edit for edit in edits if edit not in EDITS]
    if unknown or not edits:
        raise InputError(f"edits: got {list(edits)}; allowed: a non-empty list from {', '.join(EDITS)}.")
    return edits


def _checked_heads(heads, adapter: Adapter) -> list[tuple[int, int]]:
    layers, count = len(adapter.layers), adapter.num_heads
    checked = []
    for pair in heads:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(type(x) is int for x in pair)):
            raise InputError(f"heads: got {pair!r}; allowed: (layer, head) pairs of ints.")
        if not (0 <= pair[0] < layers and 0 <= pair[1] < count):
            raise InputError(f"heads: ({pair[0]}, {pair[1]}) is outside the model's {layers} layers x {count} heads.")
        checked.append(tuple(pair))
    return sorted(set(checked))


def _split(batch, adapter: Adapter) -> tuple[dict, torch.Tensor | None]:
    """The batch's model inputs and its labels (None without)."""
    labels = batch.get("labels") if isinstance(batch, dict) else None
    return model_inputs(batch, adapter), labels


class _Run:
    """The per-batch work: baseline, each head's sink events, each edit's forward and effects, the checks."""

    def __init__(self, model, adapter, heads, edits, thresholds, means, seed, donor_direction):
        self.model, self.adapter, self.heads, self.edits = model, adapter, heads, edits
        self.thresholds, self.means, self.seed, self.donor_direction = thresholds, means, seed, donor_direction
        self.rows: list[dict] = []
        self.images = 0
        self.checks = {"local_identity_max": 0.0, "noop_max": 0.0, "checked_heads": []}
        # Images a head was not edited on (no sink event of it there), by "layer:head"; edits that did not apply.
        self.skipped = {"images_without_event": {}, "edits_not_applicable": []}
        self.events: dict = {}  # (layer, head) -> per-class event counts
        self.checked: set = set()  # heads whose built-in checks ran

    def batch(self, index: int, inputs: dict, labels) -> None:
        inputs = inputs_on(inputs, self.model)
        valid = valid_tokens(inputs, self.adapter)
        kernels: dict = {}
        layers = {layer for layer, _ in self.heads}
        recording = {layer: (lambda kernel, layer=layer: kernels.__setitem__(layer, kernel)) for layer in layers}
        with kernel_handlers(self.adapter, recording):
            base = self.forward(inputs)
        baseline = Baseline.of(base, valid, labels)
        for layer, head in self.heads:
            metrics = head_metrics(self.adapter, layer, head, kernels[layer], self.thresholds, valid)
            self._head(index, inputs, baseline, layer, head, kernels[layer], metrics, valid)
        if "register_mean" in self.edits:
            self._registers(inputs, baseline)
        self.images += len(baseline.tokens)

    def forward(self, inputs: dict):
        """The model's outputs, and its final tokens where a head hides them."""
        return run_forward(self.adapter, inputs)

    def _head(self, index, inputs, baseline, layer, head, kernel, metrics, valid) -> None:
        event = metrics["event"].cpu()
        klass = [CLASSES[int(c)] for c in metrics["class"].cpu()]
        counts = self.events.setdefault((layer, head), dict.fromkeys(CLASSES, 0))
        for i in event.nonzero().flatten().tolist():
            counts[klass[i]] += 1
        unedited = self.skipped["images_without_event"]
        unedited[f"{layer}:{head}"] = unedited.get(f"{layer}:{head}", 0) + int((~event).sum())
        if not event.any():
            return
        query, key, value, _, bias = head_view(kernel, head)
        attention = head_attention(query, key, kernel.scaling, bias)
        generator = torch.Generator().manual_seed(hash((self.seed, index, layer, head)) % 2**63)
        first = self.adapter.num_prefix_tokens
        counts = (valid.sum(-1) if valid is not None else torch.full_like(metrics["sink"], value.shape[2])) - first
        chosen = choices(metrics["sink"], (first, counts), generator, self.means.get(("sink", layer, head)))
        projection = head_projection(self.adapter, layer, head).factor  # F F^T = P: checks in u-space up to rotation
        if (layer, head) not in self.checked:
            self._checks(inputs, baseline, layer, head, attention, value[:, 0], chosen, projection)
        for edit in self.edits:
            if EDITS_BY_NAME[edit].kind == "layer":
                continue
            outputs = self._edited(inputs, layer, head, edit, attention, value[:, 0].float(), chosen)
            if outputs is None:
                continue
            measured = effects(baseline, outputs, self.adapter, chosen, self.donor_direction)
            self._record(index, layer, head, edit, metrics, event, measured)

    def _checks(self, inputs, baseline, layer, head, attention, value, chosen, projection) -> None:
        """The paper's two checks, once per head: a no-op edit reproduces the outputs, and each value edit changes
        the head's update by exactly A_{:,p} (u'_p - u_p)."""
        self.checked.add((layer, head))
        outputs = self._edited(inputs, layer, head, "none", attention, value.float(), chosen)
        noop = effects(baseline, outputs, self.adapter, chosen)["final_patch_relrms"].max()
        self.checks["noop_max"] = max(self.checks["noop_max"], float(noop))
        for edit in self.edits:
            spec = EDITS_BY_NAME[edit]
            if spec.kind == "value" and not (spec.needs_mean and chosen.mean is None):
                _, edited, patched = apply_edit(edit, attention, value, chosen)
                error = local_identity_error(attention, value, edited, patched, projection)
                self.checks["local_identity_max"] = max(self.checks["local_identity_max"], error)
                if not error < 1e-8:
                    raise AssertionError(f"local identity violated: head {layer}.{head}, {edit}: {error:.2e}")
        self.checks["checked_heads"] = sorted({*self.checks["checked_heads"], f"{layer}:{head}"}, key=by_position)

    def _edited(self, inputs, layer, head, edit, attention, value, chosen):
        """The model's outputs with `edit` applied to one head (None where it does not apply)."""
        spec = EDITS_BY_NAME.get(edit)  # None: the no-op edit
        if spec is not None and spec.kind == "gate":
            return self._gated(inputs, layer, head, edit)
        if spec is not None and spec.needs_mean and chosen.mean is None:
            self._not_applicable(layer, head, edit, "no held-out sink event")
            return None
        edited_attention, edited_value, _ = apply_edit(edit, attention, value, chosen)
        replaced = edited_attention @ edited_value  # batch, N, d_h

        def handler(kernel: Kernel) -> torch.Tensor:
            output = kernel.output.clone()
            output[:, :, head] = replaced.to(output.dtype)
            return output

        with kernel_handlers(self.adapter, {layer: handler}):
            return self.forward(inputs)

    def _gated(self, inputs, layer, head, edit):
        gate = self.adapter.layers[layer].gate_proj
        if gate is None:
            self._not_applicable(layer, head, edit, "the model has no attention gate")
            return None
        width = gate.out_features // self.adapter.num_heads  # 1 for a headwise gate
        level = EDITS_BY_NAME[edit].level

        def hook(module, args, output):
            output = output.clone()
            output[..., head * width : (head + 1) * width] = level
            return output

        handle = gate.register_forward_hook(hook)
        try:
            return self.forward(inputs)
        finally:
            handle.remove()

    def _not_applicable(self, layer, head, edit, why) -> None:
        entry = f"{edit}: {why}" if head is None else f"{edit} on {layer}:{head}: {why}"
        if entry not in self.skipped["edits_not_applicable"]:
            self.skipped["edits_not_applicable"].append(entry)

    def _registers(self, inputs, baseline) -> None:
        adapter = self.adapter
        if not adapter.num_register_tokens:
            self._not_applicable(None, None, "register_mean", "the model has no register tokens")
            return
        for layer, parts in enumerate(adapter.layers):
            mean = self.means.get(("register", layer))

            def hook(module, args, kwargs, mean=mean):
                hidden = (args[0] if args else kwargs["hidden_states"]).clone()
                hidden[:, adapter.num_cls_tokens : adapter.num_prefix_tokens] = mean.to(hidden.dtype)
                return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

            handle = parts.block.register_forward_pre_hook(hook, with_kwargs=True)
            try:
                outputs = self.forward(inputs)
            finally:
                handle.remove()
            measured = effects(baseline, outputs, adapter, None)
            every = torch.ones(len(baseline.tokens), dtype=torch.bool)
            self._record_layer(layer, measured, every)

    def _record(self, index, layer, head, edit, metrics, event, measured) -> None:
        for i in event.nonzero().flatten().tolist():
            row = {"image": self.images + i, "layer": layer, "head": head, "edit": edit}
            row["class"] = CLASSES[int(metrics["class"][i])]
            row["token_type"] = TOKEN_TYPES[int(metrics["token_type"][i])]
            row["sink"] = int(metrics["sink"][i])
            row |= {name: None if values is None else finite_or_none(values[i]) for name, values in measured.items()}
            self.rows.append(row)

    def _record_layer(self, layer, measured, images) -> None:
        for i in images.nonzero().flatten().tolist():
            row = {"image": self.images + i, "layer": layer, "head": None, "edit": "register_mean"}
            row |= {"class": "all", "token_type": None, "sink": None}
            row |= {name: None if values is None else finite_or_none(values[i]) for name, values in measured.items()}
            self.rows.append(row)

"""The paper's synthetic findings (docs/science.md sections 5-6 and 8): what a model trained on the NOP or broadcast
task does with its attention, per layer: routing of NOP / active queries to the null (BOS) token, attention to the
task's key token j*, where the sink sits, ratio_out, stable rank and common-mode fraction of the head's update, sink
events by class, the gate, the task loss, the causal check (the loss with the sink's value zeroed), and the paper's
controlled-arm measures (max inflow, the attention and global-pathway ablations, donor-transfer cosines)."""

import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..configuration_sink_vit import SinkViTConfig
from ..diagnostics import Thresholds, diagnose
from ..diagnostics.report import median
from ..errors import InputError, first_line
from ..evaluation.cards import markdown_table, merge_sections
from ..evaluation.evaluate import checkpoint_name
from ..files import atomic_write, save_figure, write_json
from ..tasks import SinkTask, TokenRegressor
from ..vocabulary import CLASSES, TOKEN_TYPES
from .reference import PAPER_ARMS

EVAL_BATCHES, EVAL_BATCH_SIZE = 4, 256
# The columns of the table, in order: (key, heading).
COLUMNS = (
    ("variant", "variant"),
    ("task", "task"),
    ("seed", "seed"),
    ("penalty", "penalty"),
    ("layer", "layer"),
    ("loss", "loss"),
    ("loss_sink_zeroed", "loss, sink value zeroed"),
    ("null_attention_nop", "null attn, NOP queries"),
    ("null_attention_active", "null attn, active queries"),
    ("attention_jstar", "attn to j*"),
    ("attention_registers", "attn to registers"),
    ("loss_registers_zeroed", "loss, register values zeroed"),
    ("sink_cls", "sink on CLS"),
    ("sink_register", "sink on register"),
    ("sink_patch", "sink on patch"),
    ("ratio_out", "ratio_out"),
    ("stable_rank", "stable rank"),
    ("common_mode", "common-mode"),
    ("events_nop", "NOP events"),
    ("events_broadcast", "broadcast events"),
    ("events_other", "other events"),
    ("gate_nop", "gate, NOP queries"),
    ("gate_active", "gate, active queries"),
    ("inflow", "max inflow"),
    ("dmse_remove_attention", "dMSE, attention removed"),
    ("dmse_remove_global", "dMSE, global removed"),
    ("cosine_via_sink", "cosine via sink"),
    ("cosine_via_g", "cosine via g"),
)
# (layer, row key, heading) of the arms table.
ARM_COLUMNS = (
    (1, "loss", "task MSE"),
    (1, "inflow", "inflow L1"),
    (2, "inflow", "inflow L2"),
    (2, "dmse_remove_attention", "L2 dMSE remove attention"),
    (2, "dmse_remove_global", "L2 dMSE remove global"),
    (2, "cosine_via_sink", "L2 cosine via sink"),
    (2, "cosine_via_g", "L2 cosine via g"),
)


def load_task_model(folder: str | Path) -> tuple[TokenRegressor, SinkTask, dict]:
    """A synthetic-task checkpoint saved by train/run.py: the model, its task (same seed) and its training args."""
    folder = Path(folder)
    allowed = (
        "allowed: a folder that train/run.py wrote for dataset nop or broadcast (config.json, model.safetensors, "
        "training_args.json)"
    )
    files = [folder / name for name in ("config.json", "model.safetensors", "training_args.json")]
    if not all(path.is_file() for path in files):
        raise InputError(f"synthetic_models: {str(folder)!r} is not a synthetic-task checkpoint; {allowed}.")
    args = json.loads(files[2].read_text())
    data = args["data"]
    if data["dataset"] not in ("nop", "broadcast"):
        raise InputError(
            f"synthetic_models: {str(folder)!r} was trained on {data['dataset']!r}; allowed: the nop or broadcast "
            "task (evaluate image classifiers with --model)."
        )
    config = SinkViTConfig.from_pretrained(folder)
    config._attn_implementation = "eager"  # the analysis reads attention maps
    model = TokenRegressor(config)
    try:
        model.load_state_dict(load_file(files[1]))
    except RuntimeError as error:
        raise InputError(
            f"synthetic_models: the weights in {str(folder)!r} do not fit this version's toy model "
            f"({first_line(error)}); "
            "retrain it with train/run.py."
        ) from None
    task = SinkTask(data["dataset"], dim=data["task_dim"], length=data["task_length"], seed=args["train"]["seed"])
    return model.eval(), task, args


@torch.no_grad()
def analyse(
    model: TokenRegressor, task: SinkTask, name: str = "", variant: str = "", seed: int = 0, penalty: float = 0.0
) -> list[dict]:
    """One row per layer (head 0: the task models have one head) with the table's quantities, on held-out data;
    `penalty` is the common-mode penalty's lambda the model was trained with (reported, not used)."""
    config = model.config
    prefix = config.num_prefix_tokens
    batches = [task.batch(10**9 + index, EVAL_BATCH_SIZE) for index in range(EVAL_BATCHES)]
    pixels = [batch["pixel_values"] for batch in batches]
    tokens = torch.cat([p.squeeze(2).transpose(1, 2) for p in pixels])  # sequences, L, d
    score = tokens @ task.direction
    active = score > 0  # NOP task: these queries must cancel their token; the others do nothing
    jstar = score.argmax(dim=1)

    outputs = [model.sink_vit(p, output_attentions=True, output_gate_values=True) for p in pixels]
    # Every (image, layer, head) as a record: the dominant key, ratio_out, stable rank, common-mode fraction.
    every = diagnose(model.sink_vit, pixels, thresholds=Thresholds(event=0.0)).events
    # The paper's rule picks the records whose routed share reaches its threshold; nothing else depends on it.
    events = [r for r in every if r["routed_frac"] >= Thresholds().event]
    loss = task_loss(model, batches)

    rows = []
    for layer in range(config.num_hidden_layers):
        attention = torch.cat([out.attentions[layer][:, 0] for out in outputs])  # sequences, N, N (head 0)
        queries = attention[:, prefix:]  # the task's tokens as queries
        records = [r for r in every if r["layer"] == layer and r["head"] == 0]
        sinks = torch.tensor([r["sink"] for r in sorted(records, key=lambda r: r["image"])])
        row = {"name": name, "variant": variant, "task": task.kind, "seed": seed, "penalty": penalty}
        row.update(layer=layer + 1, loss=loss)
        row["loss_sink_zeroed"] = task_loss(model, batches, zero=(layer, sinks))
        row |= _routing(task.kind, queries, active, jstar, prefix)
        row["attention_registers"] = row["loss_registers_zeroed"] = None
        if config.num_register_tokens:
            row["attention_registers"] = float(queries[..., 1:prefix].sum(-1).mean())
            every_register = torch.arange(1, prefix).expand(len(tokens), -1)
            row["loss_registers_zeroed"] = task_loss(model, batches, zero=(layer, every_register))
        for kind in TOKEN_TYPES:
            row[f"sink_{kind}"] = sum(r["token_type"] == kind for r in records) / len(records)
        for key in ("ratio_out", "stable_rank", "common_mode"):
            row[key] = median([r[key] for r in records])
        layer_events = [e for e in events if e["layer"] == layer and e["head"] == 0]
        for kind in CLASSES:
            row[f"events_{kind}"] = sum(e["class"] == kind for e in layer_events) / len(records)
        row |= _gates(config, [out.gate_values for out in outputs], layer, task.kind, active)
        # The paper's max inflow (its Eq. 2): the most attention one key gets, averaged over the task's queries.
        row["inflow"] = float(queries.mean(dim=1).amax(dim=-1).mean())
        row.update(ablations(model, task, batches, layer, loss))
        rows.append(row)
    return rows


@torch.no_grad()
def ablations(model: TokenRegressor, task: SinkTask, batches: list[dict], layer: int, loss: float) -> dict:
    """The paper's interventions on one layer (toy/global_pathway/evaluate.py), each with A held fixed and run through
    the rest of the model, on `batches` (whose unedited held-out MSE is `loss`):

    - `dmse_remove_attention` / `dmse_remove_global`: the MSE change with the attention update (after o_proj and
      any gate) / the global pathway's update set to zero (None without a pathway);
    - `cosine_via_sink` / `cosine_via_g` (broadcast task): head 0's value at j* / the pathway's state g replaced by
      the donor's (the next sequence of the batch: its value at its own j*, its g); the mean over sequences of
      `transfer_cosine` between the change of the outputs and the change of the target, alpha (x'_j* - x_j*) R.
    """
    block = model.sink_vit.layers[layer]
    pathway = block.global_pathway
    prefix = model.config.num_prefix_tokens
    width = model.config.hidden_size // model.config.num_attention_heads
    losses = {"attention": [], "global": []}
    cosines = {"sink": [], "g": []}
    for batch in batches:
        pixels, targets = batch["pixel_values"], batch["targets"]
        tokens = pixels.squeeze(2).transpose(1, 2)
        seen = {}
        taps = [(block.attention.v_proj, "value")] + ([(pathway.value_proj, "state")] if pathway else [])
        base = _predict(model, pixels, [(module, _keep(seen, key)) for module, key in taps])
        losses["attention"].append(_mse(_predict(model, pixels, [(block.attention, _zero_first)]), targets))
        if pathway is not None:
            losses["global"].append(_mse(_predict(model, pixels, [(pathway, _zero)]), targets))
        if task.kind != "broadcast":
            continue
        sequences = torch.arange(len(tokens))
        donor = sequences.roll(-1)
        jstar = (tokens @ task.direction).argmax(dim=1)
        payload = tokens[sequences, jstar] @ task.rotation
        desired = task.alpha * (payload[donor] - payload)
        donor_value = _overwrite(prefix + jstar, seen["value"][donor, prefix + jstar[donor], :width])
        edited = _predict(model, pixels, [(block.attention.v_proj, donor_value)])
        cosines["sink"].append(transfer_cosine(edited - base, jstar, desired))
        if pathway is not None:
            edited = _predict(model, pixels, [(pathway.value_proj, _constant(seen["state"][donor]))])
            cosines["g"].append(transfer_cosine(edited - base, jstar, desired))
    result = {}
    for key, values in losses.items():
        result[f"dmse_remove_{key}"] = sum(values) / len(values) - loss if values else None
    for key, values in cosines.items():
        result[f"cosine_via_{key}"] = float(torch.cat(values).mean()) if values else None
    return result


def _routing(kind: str, queries: torch.Tensor, active: torch.Tensor, jstar: torch.Tensor, prefix: int) -> dict:
    """Where head 0's task queries send their attention: the NOP task's null token, by NOP and active queries; the
    broadcast task's key token j*."""
    if kind == "nop":
        null = queries[..., 0]
        return {
            "null_attention_nop": float(null[~active].mean()),
            "null_attention_active": float(null[active].mean()),
            "attention_jstar": None,
        }
    to_jstar = queries.gather(2, (prefix + jstar)[:, None, None].expand(-1, queries.shape[1], 1))
    return {"null_attention_nop": None, "null_attention_active": None, "attention_jstar": float(to_jstar.mean())}


def _gates(config, gate_values: list, layer: int, kind: str, active: torch.Tensor) -> dict:
    """Head 0's mean gate over the task's queries (the NOP task: by NOP and active queries); None without a gate."""
    row = {"gate_nop": None, "gate_active": None}
    if config.attention_gate == "none":
        return row
    prefix = config.num_prefix_tokens
    gate = torch.cat([values[layer] for values in gate_values])[:, prefix:]  # sequences, L, heads|C
    per_query = gate.reshape(*gate.shape[:2], config.num_attention_heads, -1).mean(-1)[..., 0]
    if kind == "nop":
        return {"gate_nop": float(per_query[~active].mean()), "gate_active": float(per_query[active].mean())}
    return row | {"gate_active": float(per_query.mean())}


def transfer_cosine(change: torch.Tensor, jstar: torch.Tensor, desired: torch.Tensor) -> torch.Tensor:
    """Per sequence, the cosine between the mean change (sequences, L, d) of the recipients' outputs (every token but
    j*) and `desired` (sequences, d); sequences where either is ~0 (norm <= 1e-10) are left out, as in the paper."""
    recipients = torch.ones(change.shape[:2], dtype=torch.bool)
    recipients[torch.arange(len(change)), jstar] = False
    mean = (change * recipients[..., None]).sum(dim=1) / recipients.sum(dim=1, keepdim=True)
    kept = (mean.norm(dim=-1) > 1e-10) & (desired.norm(dim=-1) > 1e-10)
    return F.cosine_similarity(mean[kept], desired[kept], dim=-1)


def _predict(model: TokenRegressor, pixels: torch.Tensor, hooks: list) -> torch.Tensor:
    """The model's predictions with the forward hooks `hooks` ((module, hook), ...) in place for this one pass."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        return model(pixels)["predictions"]
    finally:
        for handle in handles:
            handle.remove()


def _mse(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.mse_loss(predictions, targets))


def _keep(store: dict, key: str):
    def hook(module, args, output):
        store[key] = output

    return hook


def _overwrite(positions: torch.Tensor, values: torch.Tensor):
    """A hook writing values[i] (sequences, width) over the first width channels of token positions[i] of sequence i."""

    def hook(module, args, output):
        output = output.clone()
        output[torch.arange(len(output)), positions, : values.shape[-1]] = values
        return output

    return hook


def _constant(value: torch.Tensor):
    def hook(module, args, output):
        return value

    return hook


def _zero(module, args, output):
    return torch.zeros_like(output)


def _zero_first(module, args, output):
    return (torch.zeros_like(output[0]), *output[1:])


def task_loss(model: TokenRegressor, batches: list[dict], zero: tuple[int, torch.Tensor] | None = None) -> float:
    """Held-out MSE; with `zero=(layer, tokens)` head 0's value of token tokens[i] (or of each token in the row
    tokens[i]) of sequence i is zeroed in that layer.

    Attention weights depend on queries and keys only, so zeroing a value leaves them as they were (A held fixed).
    """
    handle = None
    if zero is not None:
        layer, sinks = zero
        width = model.config.hidden_size // model.config.num_attention_heads
        offset = [0]

        def edit(module, args, output):
            chosen = sinks[offset[0] : offset[0] + len(output)]
            rows = torch.arange(len(output)).view(-1, *([1] * (chosen.ndim - 1)))
            output[rows, chosen, :width] = 0.0
            offset[0] += len(output)
            return output

        handle = model.sink_vit.layers[layer].attention.v_proj.register_forward_hook(edit)
    try:
        losses = [float(model(**batch)["loss"]) for batch in batches]
    finally:
        if handle is not None:
            handle.remove()
    return sum(losses) / len(losses)


def table(rows: list[dict]) -> str:
    """The Markdown table of `rows` (the COLUMNS, in order)."""
    return markdown_table([heading for _, heading in COLUMNS], [[row[key] for key, _ in COLUMNS] for row in rows])


def arms_table(rows: list[dict]) -> str:
    """The paper's controlled broadcast arms (PAPER_ARMS) among `rows`: one line per seed, their mean (None where a seed
    has None) and the paper's numbers, in ARM_COLUMNS; empty text when no row is one of the arms."""
    lines = []
    for arm, (variant, penalised, paper) in PAPER_ARMS.items():
        runs = {}  # (seed, name) -> layer -> row
        for row in rows:
            if (row["task"], row["variant"], bool(row["penalty"])) == ("broadcast", variant, penalised):
                runs.setdefault((row["seed"], row["name"]), {})[row["layer"]] = row
        # The paper's arms have two layers: a broadcast model of another depth is no run of them.
        runs = {run: layers for run, layers in runs.items() if all(layer in layers for layer, _, _ in ARM_COLUMNS)}
        if not runs:
            continue
        measured = [[runs[run][layer][key] for layer, key, _ in ARM_COLUMNS] for run in sorted(runs)]
        lines += [[arm, f"seed {seed}", *values] for (seed, _), values in zip(sorted(runs), measured, strict=True)]
        means = [None if None in column else sum(column) / len(column) for column in zip(*measured, strict=True)]
        lines += [[arm, f"mean of {len(measured)}", *means], [arm, "paper (5 seeds)", *paper]]
    if not lines:
        return ""
    return markdown_table(["arm", "source", *(heading for _, _, heading in ARM_COLUMNS)], lines)


def retrain(folder: str | Path, steps: int, seed: int, output_dir: str | Path) -> Path:
    """Train the model of a synthetic checkpoint afresh from its recorded recipe: `steps` steps, seed `seed`."""
    from ..training import DataArguments, ModelArguments, TrainArguments, train

    args = json.loads((Path(folder) / "training_args.json").read_text())
    train_args = replace(
        TrainArguments(**args["train"]), max_steps=steps, seed=seed, output_dir=str(output_dir), save_steps=0
    )
    train(ModelArguments(**args["model"]), DataArguments(**args["data"]), train_args)
    return Path(output_dir) / "model"


def synthetic_rows(
    folders: list[str], retrain_steps: int = 0, seeds=(0,), work_dir: Path | None = None, progress: bool = False
) -> list[dict]:
    """The table's rows for synthetic-task checkpoints, each checked before any work is done.

    With `retrain_steps`, each checkpoint's recipe is first trained afresh for that many steps per seed, into
    `work_dir/<name>-seed<seed>` (default work_dir: runs/synthetic). `progress`: a progress bar over the models.
    """
    names = [checkpoint_name(folder) for folder in folders]
    for folder in folders:
        load_task_model(folder)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"synthetic_models: two checkpoints are both named {repeated}; give each its own folder.")
    runs = []
    for folder, name in zip(folders, names, strict=True):
        if not retrain_steps:
            runs.append((name, Path(folder)))
            continue
        for seed in seeds:
            out = Path(work_dir or "runs/synthetic") / f"{name}-seed{seed}"
            runs.append((name, retrain(folder, retrain_steps, seed, out)))
    rows = []
    for name, folder in tqdm(runs, desc="synthetic-task models", unit="model", disable=not progress):
        model, task, args = load_task_model(folder)
        penalty = args["train"].get("common_mode_penalty", 0.0)  # absent in checkpoints from before the penalty
        rows.extend(analyse(model, task, name, args["model"]["variant"], args["train"]["seed"], penalty))
    rows.sort(key=lambda r: (r["task"] != "nop", r["variant"], r["name"], r["seed"], r["layer"]))
    return rows


def write_synthetic(rows: list[dict], results_dir: Path, retrain_steps: int = 0) -> None:
    """results_dir/synthetic.{json,md,png}; synthetic.md keeps any text outside its generated section."""
    # 6 significant digits: the last bits of a float32 loss differ between runs with other thread counts.
    rounded = [{k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    write_json(results_dir / "synthetic.json", {"retrain_steps": retrain_steps, "rows": rounded})
    figure = plot_synthetic(rows, results_dir / "synthetic.png")
    generated = (
        "<!-- sink-models:begin table -->\n"
        "Measured by `accelerate launch eval/run.py` (suite `zoo` or `synthetic`) on "
        f"{EVAL_BATCHES * EVAL_BATCH_SIZE} held-out sequences per model"
        + (f", models retrained for {retrain_steps} steps" if retrain_steps else ", the zoo's models")
        + ". One row per model and layer; attention figures are head 0's (the task models have one head).\n\n"
        + table(rows)
        + f"\n\n![The synthetic findings]({figure.name})\n<!-- sink-models:end table -->\n\n"
        "<!-- sink-models:begin arms -->\n"
        + (arms_table(rows) or "None of these models is one of the paper's controlled broadcast arms.")
        + "\n<!-- sink-models:end arms -->"
    )
    path = results_dir / "synthetic.md"
    old = path.read_text() if path.exists() else "# The paper's synthetic findings, measured\n\n"
    atomic_write(path, merge_sections(old, generated))


def plot_synthetic(rows: list[dict], path: Path) -> Path:
    """Two panels: the NOP task's routing and gate per variant; the broadcast task's routing per variant and layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1, 2]})
    nop = [r for r in rows if r["task"] == "nop"]
    bars = (
        ("null_attention_nop", "null attn, NOP q"),
        ("null_attention_active", "null attn, active q"),
        ("gate_nop", "gate, NOP q"),
        ("gate_active", "gate, active q"),
    )
    _bars(left, nop, bars, lambda r: f"{r['variant']} s{r['seed']}")
    left.set_title("NOP task: routing to the null token and the gate", pad=42)
    broadcast = [r for r in rows if r["task"] == "broadcast"]
    bars = (
        ("attention_jstar", "attn to j*"),
        ("attention_registers", "attn to registers"),
        ("common_mode", "common-mode"),
    )
    _bars(
        right, broadcast, bars, lambda r: f"{r['variant']}{'+pen' if r['penalty'] else ''} s{r['seed']} L{r['layer']}"
    )
    right.set_title("Broadcast task: routing to j*, per layer", pad=42)
    for axis in (left, right):
        axis.set_ylim(0, 1.05)
        axis.legend(fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    return save_figure(figure, path, dpi=110)


def _bars(axis, rows: list[dict], bars, label) -> None:
    width = 0.8 / len(bars)
    for number, (key, name) in enumerate(bars):
        values = [r[key] if r[key] is not None else float("nan") for r in rows]
        axis.bar([i + number * width for i in range(len(rows))], values, width, label=name)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [label(r) for r in rows], rotation=60, ha="right")

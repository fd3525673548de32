"""The paper's synthetic findings (SCIENCE.md sections 5-6): what a model trained on the NOP or broadcast task does
with its attention, per layer: routing of NOP / active queries to the null (BOS) token, attention to the task's
key token j*, where the sink sits, ratio_out, stable rank and common-mode fraction of the head's update, sink
events by class, the gate, the task loss, and the causal check (the loss with the sink's value zeroed).
"""

import json
import os
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from .cards import markdown_table, merge_sections
from .configuration_sink_vit import SinkViTConfig
from .diagnostics import Thresholds, diagnose
from .diagnostics.report import median
from .errors import first_line
from .evaluation import checkpoint_name
from .files import atomic_write, write_json
from .tasks import SinkTask, TokenRegressor

EVAL_BATCHES, EVAL_BATCH_SIZE = 4, 256
# The columns of the table, in order: (key, heading).
COLUMNS = (
    ("variant", "variant"),
    ("task", "task"),
    ("seed", "seed"),
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
        raise ValueError(f"synthetic_models: {str(folder)!r} is not a synthetic-task checkpoint; {allowed}.")
    args = json.loads(files[2].read_text())
    data = args["data"]
    if data["dataset"] not in ("nop", "broadcast"):
        raise ValueError(
            f"synthetic_models: {str(folder)!r} was trained on {data['dataset']!r}; allowed: the nop or broadcast "
            "task (evaluate image classifiers with --model)."
        )
    config = SinkViTConfig.from_pretrained(folder)
    config._attn_implementation = "eager"  # the analysis reads attention maps
    model = TokenRegressor(config)
    try:
        model.load_state_dict(load_file(files[1]))
    except RuntimeError as error:
        raise ValueError(
            f"synthetic_models: the weights in {str(folder)!r} do not fit this version's toy model "
            f"({first_line(error)}); "
            "retrain it with train/run.py."
        ) from None
    task = SinkTask(data["dataset"], dim=data["task_dim"], length=data["task_length"], seed=args["train"]["seed"])
    return model.eval(), task, args


@torch.no_grad()
def analyse(model: TokenRegressor, task: SinkTask, name: str = "", variant: str = "", seed: int = 0) -> list[dict]:
    """One row per layer (head 0: the task models have one head) with the table's quantities, on held-out data."""
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
    loss = _loss(model, batches)

    rows = []
    for layer in range(config.num_hidden_layers):
        attention = torch.cat([out.attentions[layer][:, 0] for out in outputs])  # sequences, N, N (head 0)
        queries = attention[:, prefix:]  # the task's tokens as queries
        records = [r for r in every if r["layer"] == layer and r["head"] == 0]
        sinks = torch.tensor([r["sink"] for r in sorted(records, key=lambda r: r["image"])])
        row = {"name": name, "variant": variant, "task": task.kind, "seed": seed, "layer": layer + 1, "loss": loss}
        row["loss_sink_zeroed"] = _loss(model, batches, zero=(layer, sinks))
        if task.kind == "nop":
            null = queries[..., 0]
            row["null_attention_nop"] = float(null[~active].mean())
            row["null_attention_active"] = float(null[active].mean())
            row["attention_jstar"] = None
        else:
            row["null_attention_nop"] = row["null_attention_active"] = None
            to_jstar = queries.gather(2, (prefix + jstar)[:, None, None].expand(-1, queries.shape[1], 1))
            row["attention_jstar"] = float(to_jstar.mean())
        registers = config.num_register_tokens
        row["attention_registers"] = row["loss_registers_zeroed"] = None
        if registers:
            row["attention_registers"] = float(queries[..., 1:prefix].sum(-1).mean())
            every_register = torch.arange(1, prefix).expand(len(tokens), -1)
            row["loss_registers_zeroed"] = _loss(model, batches, zero=(layer, every_register))
        for kind in ("cls", "register", "patch"):
            row[f"sink_{kind}"] = sum(r["token_type"] == kind for r in records) / len(records)
        for key in ("ratio_out", "stable_rank", "common_mode"):
            row[key] = median([r[key] for r in records])
        layer_events = [e for e in events if e["layer"] == layer and e["head"] == 0]
        for kind in ("nop", "broadcast", "other"):
            row[f"events_{kind}"] = sum(e["class"] == kind for e in layer_events) / len(records)
        row["gate_nop"] = row["gate_active"] = None
        if config.attention_gate != "none":
            gate = torch.cat([out.gate_values[layer] for out in outputs])[:, prefix:]  # sequences, L, heads|C
            per_query = gate.reshape(*gate.shape[:2], config.num_attention_heads, -1).mean(-1)[..., 0]
            if task.kind == "nop":
                row["gate_nop"], row["gate_active"] = float(per_query[~active].mean()), float(per_query[active].mean())
            else:
                row["gate_active"] = float(per_query.mean())
        rows.append(row)
    return rows


def _loss(model: TokenRegressor, batches: list[dict], zero: tuple[int, torch.Tensor] | None = None) -> float:
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


def retrain(folder: str | Path, steps: int, seed: int, output_dir: str | Path) -> Path:
    """Train the model of a synthetic checkpoint afresh from its recorded recipe: `steps` steps, seed `seed`."""
    from .training import DataArguments, ModelArguments, TrainArguments, train

    args = json.loads((Path(folder) / "training_args.json").read_text())
    train_args = replace(
        TrainArguments(**args["train"]), max_steps=steps, seed=seed, output_dir=str(output_dir), save_steps=0
    )
    train(ModelArguments(**args["model"]), DataArguments(**args["data"]), train_args)
    return Path(output_dir) / "model"


def synthetic_rows(folders: list[str], retrain_steps: int = 0, seeds=(0,), work_dir: Path | None = None) -> list[dict]:
    """The table's rows for synthetic-task checkpoints, each checked before any work is done.

    With `retrain_steps`, each checkpoint's recipe is first trained afresh for that many steps per seed, into
    `work_dir/<name>-seed<seed>` (default work_dir: runs/synthetic).
    """
    names = [checkpoint_name(folder) for folder in folders]
    for folder in folders:
        load_task_model(folder)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"synthetic_models: two checkpoints are both named {repeated}; give each its own folder.")
    runs = []
    for folder, name in zip(folders, names, strict=True):
        if not retrain_steps:
            runs.append((name, Path(folder)))
            continue
        for seed in seeds:
            out = Path(work_dir or "runs/synthetic") / f"{name}-seed{seed}"
            runs.append((name, retrain(folder, retrain_steps, seed, out)))
    rows = []
    for name, folder in runs:
        model, task, args = load_task_model(folder)
        rows.extend(analyse(model, task, name, args["model"]["variant"], args["train"]["seed"]))
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
        + f"\n\n![The synthetic findings]({figure.name})\n<!-- sink-models:end table -->"
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
    _bars(right, broadcast, bars, lambda r: f"{r['variant']} s{r['seed']} L{r['layer']}")
    right.set_title("Broadcast task: routing to j*, per layer", pad=42)
    for axis in (left, right):
        axis.set_ylim(0, 1.05)
        axis.legend(fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    staging = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(staging, dpi=110)
    plt.close(figure)
    return Path(os.replace(staging, path) or path)


def _bars(axis, rows: list[dict], bars, label) -> None:
    width = 0.8 / len(bars)
    for number, (key, name) in enumerate(bars):
        values = [r[key] if r[key] is not None else float("nan") for r in rows]
        axis.bar([i + number * width for i in range(len(rows))], values, width, label=name)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [label(r) for r in rows], rotation=60, ha="right")

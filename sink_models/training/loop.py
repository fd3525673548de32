"""The training loop on accelerate, used by train/run.py: the same loop for every kind of run (see runs)."""

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import gather_object, set_seed
from transformers import get_cosine_schedule_with_warmup

from .arguments import DataArguments, ModelArguments, TrainArguments, checked_inputs, input_errors
from .metrics import MetricsLog
from .monitors import ActivationMonitor, CommonModePenalty
from .resume import TrainState, kept_log_lines, resume, save_state
from .runs import Run, make_run
from .threads import set_torch_threads, threads_message


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainArguments, on_step=None) -> dict:
    """Train, checkpoint, evaluate and save; returns the run summary (also written to output_dir/summary.json).

    `on_step(step, metrics)` is called after every optimizer step on every process (tests interrupt runs with it).
    The torch thread count it sets (see torch_threads) is put back on return.
    """
    threads = torch.get_num_threads()
    try:
        return _train(model_args, data_args, args, on_step)
    finally:
        torch.set_num_threads(threads)


def _train(model_args: ModelArguments, data_args: DataArguments, args: TrainArguments, on_step) -> dict:
    overrides = checked_inputs(model_args, data_args, args)
    output_dir = Path(args.output_dir)
    trackers = None if args.report_to == "none" else args.report_to
    accelerator = _accelerator(args, trackers)
    threads = set_torch_threads(args, data_args, accelerator)  # before the model is built
    set_seed(args.seed)
    with input_errors():  # the config's fields, the dataset, its options
        run = make_run(model_args, data_args, args, overrides, accelerator)
    blocks = run.model.sink_vit.layers
    optimizer = run.prepare(torch.optim.AdamW(parameter_groups(run.model, args.weight_decay), lr=args.learning_rate))
    # The loop runs the compiled model; saving, loading and evaluation use the prepared one it wraps.
    forward = torch.compile(run.model, backend=args.torch_compile_backend) if args.torch_compile else run.model
    total_steps = run.total_steps()
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, total_steps), total_steps)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)
    _resume(args.resume_from_checkpoint, output_dir, accelerator, run.model, optimizer, scheduler, state)
    if trackers:
        accelerator.init_trackers("sink-models", config=_flat_config(model_args, data_args, args))

    monitor = ActivationMonitor(blocks)
    penalty = CommonModePenalty(blocks) if args.common_mode_penalty else None
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_local_main_process:  # said once the input is known to be good: bad input gets one line
        print(threads_message(threads), file=sys.stderr)
    log = MetricsLog(accelerator, args, total_steps, state.step, bool(trackers))
    while state.step < total_steps:
        for batch in run.batches(state.step):
            unreadable = run.unreadable(batch)
            state.unreadable += unreadable
            loss, common, grad_norm = _accumulate(run, forward, optimizer, batch, unreadable, penalty, args)
            log.batch(loss, common, len(batch["pixel_values"]))
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            metrics = log.step(state, grad_norm, monitor, scheduler.get_last_lr()[0])
            if args.save_steps and state.step % args.save_steps == 0:
                save_state(accelerator, output_dir / "checkpoints", state.step, args.save_total_limit)
            if on_step is not None:
                on_step(state.step, metrics)
            if state.step >= total_steps:
                break
    log.close()
    if penalty is not None:
        penalty.remove()

    summary = _summary(run, state, run.evaluate()) | {"torch_threads": threads}
    _finish(run, summary, (model_args, data_args, args))
    return summary


def _accelerator(args: TrainArguments, trackers: str | None) -> Accelerator:
    with input_errors():  # e.g. fp16 without a GPU, an unknown tracker
        return Accelerator(
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=trackers,
            project_dir=str(Path(args.output_dir)),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )


def _resume(option: str | None, output_dir: Path, accelerator, model, optimizer, scheduler, state) -> None:
    """Load the checkpoint `option` names, if any, and drop the interrupted run's log lines after it."""
    # Not accelerator.load_state: it unpickles (weights_only=False) what it finds in the folder.
    if resume(option, output_dir / "checkpoints", accelerator, model, optimizer, scheduler, state) is not None:
        kept = kept_log_lines(output_dir / "metrics.jsonl", state.step)
        if kept is not None and accelerator.is_main_process:
            (output_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))


def _accumulate(run: Run, forward, optimizer, batch: dict, unreadable: int, penalty, args: TrainArguments) -> tuple:
    """Forward and backward of one batch, under gradient accumulation; the optimizer steps on its last batch.
    (its loss, its penalty term or None, the gradient norm or None)."""
    accelerator = run.accelerator
    with accelerator.accumulate(run.model):
        outputs = forward(**batch)
        loss = run.loss(outputs, batch, unreadable)
        objective, common = loss, None
        if penalty is not None:
            common = penalty.take()
            objective = loss + args.common_mode_penalty * common
        accelerator.backward(objective)
        grad_norm = None
        if accelerator.sync_gradients:
            norm = accelerator.clip_grad_norm_(run.model.parameters(), args.max_grad_norm)
            grad_norm = None if norm is None else float(norm)  # DeepSpeed clips by itself
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss, common, grad_norm


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, LayerScale or the CLS/register/position tokens."""
    decay, rest = [], []
    for name, parameter in model.named_parameters():
        tokens = "embeddings." in name and "patch_embeddings" not in name
        (decay if parameter.ndim >= 2 and not tokens else rest).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _summary(run: Run, state: TrainState, evaluation: dict) -> dict:
    """The run summary (summary.json): steps, final loss, held-out figures, stability, skipped images, checksums."""
    return {
        "steps": state.step,
        "final_loss": state.recent_losses[-1] if state.recent_losses else None,
        "evaluation": evaluation,
        "stability": {
            "loss_spikes": state.spikes,
            "largest_grad_norm": state.largest_grad,
            "largest_activation": state.largest_activation,
        },
        **run.skipped(state),
        "processes": run.accelerator.num_processes,
        # One sum of all parameters per process: equal when the ranks stayed in sync.
        "parameter_checksums": gather_object([sum(float(p.detach().double().sum()) for p in run.model.parameters())]),
    }


def _finish(run: Run, summary: dict, arguments: tuple) -> None:
    """Save the final model with the run's arguments, and the summary; close the trackers."""
    model_args, data_args, args = arguments
    accelerator, output_dir = run.accelerator, Path(args.output_dir)
    # Every process takes part: under FSDP the weights are shards, gathered here into the main process's copy.
    weights = accelerator.get_state_dict(run.model)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder = output_dir / "model"
        run.save(weights, folder)
        recorded = {"model": asdict(model_args), "data": asdict(data_args), "train": asdict(args)}
        (folder / "training_args.json").write_text(json.dumps(recorded, indent=1))
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    # Not end_training(): it also destroys the process group, whose gloo teardown can deadlock (see processes.py).
    for tracker in accelerator.trackers:
        tracker.finish()


def _flat_config(*groups) -> dict:
    return {f"{type(group).__name__}.{key}": value for group in groups for key, value in asdict(group).items()}

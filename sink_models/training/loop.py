"""The training loop on accelerate, used by train/run.py: any variant on image data or a synthetic sink task."""

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..data import IGNORED, Collate
from ..errors import InputError
from ..tasks import TASKS
from .arguments import DataArguments, ModelArguments, TrainArguments, checked_inputs, input_errors
from .monitors import ActivationMonitor, CommonModePenalty
from .resume import TrainState, kept_log_lines, resume, save_state
from .runs import batches, evaluate, model_and_data, prepare, save_final, streamed_batches
from .threads import set_torch_threads


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
    if data_args.streaming and data_args.dataset in TASKS:
        raise InputError(f"streaming: {data_args.dataset!r} is generated, not read; allowed: an image dataset.")
    output_dir = Path(args.output_dir)
    trackers = None if args.report_to == "none" else args.report_to
    with input_errors():  # e.g. fp16 without a GPU, an unknown tracker
        accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=trackers,
            project_dir=str(output_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
    threads = set_torch_threads(args, data_args, accelerator)  # before the model is built
    set_seed(args.seed)
    with input_errors():  # the config's fields, the dataset, its options
        task, model, data, collate, loader, eval_loader, processor = model_and_data(
            model_args, data_args, args, overrides, accelerator
        )
    blocks = model.sink_vit.layers

    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.learning_rate)
    prepared = prepare(accelerator, model, optimizer, loader, eval_loader, task, data, data_args, args)
    model, optimizer, loader, eval_loader, steps_per_epoch = prepared
    # The loop runs the compiled model; saving, loading and evaluation use the prepared one it wraps.
    forward = torch.compile(model, backend=args.torch_compile_backend) if args.torch_compile else model
    if task is not None and not args.max_steps:
        raise InputError(f"max_steps: got 0; allowed: an int > 0 (the task {data_args.dataset!r} has no epochs).")
    total_steps = args.max_steps or math.ceil(args.num_epochs * steps_per_epoch)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, total_steps), total_steps)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)
    checkpoints = output_dir / "checkpoints"
    # Not accelerator.load_state: it unpickles (weights_only=False) what it finds in the folder.
    if resume(args.resume_from_checkpoint, checkpoints, accelerator, model, optimizer, scheduler, state) is not None:
        kept = kept_log_lines(output_dir / "metrics.jsonl", state.step)
        if kept is not None and accelerator.is_main_process:
            (output_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    if trackers:
        accelerator.init_trackers("sink-models", config=_flat_config(model_args, data_args, args))

    monitor = ActivationMonitor(blocks)
    penalty = CommonModePenalty(blocks) if args.common_mode_penalty else None
    log_path = output_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_local_main_process:  # said once the input is known to be good: bad input gets one line
        why = {"torch_threads": "--torch_threads", "OMP_NUM_THREADS": "OMP_NUM_THREADS"}.get(threads["from"])
        if why is None:
            why = (f"{threads['cores']} cores less one, {threads['processes']} process(es), "
                   f"{threads['loader_workers']} loader workers each")  # fmt: skip
        print(f"torch threads: {threads['threads']} per process ({why})", file=sys.stderr)
    progress = tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_local_main_process)
    started, images_since, window, penalties = time.perf_counter(), 0, [], []
    while state.step < total_steps:
        read = streamed_batches if data_args.streaming else batches
        for batch in read(task, loader, state.step, steps_per_epoch, args, accelerator, collate):
            # Unreadable images (labelled IGNORED by the collate, in a worker or here): one device sync a batch.
            unreadable = 0 if task is not None else int((batch["labels"] == IGNORED).sum())
            state.unreadable += unreadable
            with accelerator.accumulate(model):
                outputs = forward(**batch)
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs.loss
                if task is None and unreadable == len(batch["labels"]):
                    loss = outputs.logits.sum() * 0.0  # every image unreadable: same calls as the other ranks
                objective = loss
                if penalty is not None:
                    common = penalty.take()
                    objective = loss + args.common_mode_penalty * common
                    penalties.append(common.detach())
                accelerator.backward(objective)
                grad_norm = None
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    grad_norm = None if norm is None else float(norm)  # DeepSpeed clips by itself
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window.append(loss.detach())
            images_since += len(batch["pixel_values"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            step_loss = float(accelerator.reduce(torch.stack(window).mean(), "mean"))  # the whole accumulation
            window = []
            activation = monitor.take()
            state.record(step_loss, grad_norm, activation)
            metrics = {"step": state.step, "loss": step_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm}
            if penalties:  # the task loss stays "loss": the penalty is logged beside it, unweighted
                metrics["common_mode_penalty"] = float(accelerator.reduce(torch.stack(penalties).mean(), "mean"))
                penalties = []
            if state.step % args.logging_steps == 0 or state.step == total_steps:
                elapsed = time.perf_counter() - started
                metrics |= {"images_per_s": images_since / elapsed, "max_activation": activation}
                started, images_since = time.perf_counter(), 0
                if accelerator.is_main_process:
                    with open(log_path, "a") as log:
                        log.write(json.dumps(metrics) + "\n")
                if trackers:
                    accelerator.log(metrics, step=state.step)
                progress.set_postfix(loss=f"{step_loss:.4f}")
            progress.update(1)
            if args.save_steps and state.step % args.save_steps == 0:
                save_state(accelerator, checkpoints, state.step, args.save_total_limit)
            if on_step is not None:
                on_step(state.step, metrics)
            if state.step >= total_steps:
                break
    progress.close()
    if penalty is not None:
        penalty.remove()

    evaluation = evaluate(accelerator, model, task, eval_loader, data_args, args)
    summary = _summary(accelerator, model, state, evaluation, collate) | {"torch_threads": threads}
    _finish(accelerator, model, summary, task, processor, (model_args, data_args, args))
    return summary


def _finish(accelerator, model, summary: dict, task, processor, arguments: tuple) -> None:
    """Save the final model and the summary, and close the trackers."""
    model_args, data_args, args = arguments
    output_dir = Path(args.output_dir)
    # Every process takes part: under FSDP the weights are shards, gathered here into the main process's copy.
    weights = accelerator.get_state_dict(model)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_final(unwrapped, weights, task, output_dir, model_args, data_args, args, processor)
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    # Not end_training(): it also destroys the process group, whose gloo teardown can deadlock (see processes.py).
    for tracker in accelerator.trackers:
        tracker.finish()


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, LayerScale or the CLS/register/position tokens."""
    decay, rest = [], []
    for name, parameter in model.named_parameters():
        tokens = "embeddings." in name and "patch_embeddings" not in name
        (decay if parameter.ndim >= 2 and not tokens else rest).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _summary(accelerator, model, state: TrainState, evaluation: dict, collate: Collate | None) -> dict:
    """The run summary (summary.json): steps, final loss, held-out figures, stability, skipped images, checksums."""
    skipped = None if collate is None else int(accelerator.reduce(torch.tensor(state.unreadable), "sum"))
    return {
        "steps": state.step,
        "final_loss": state.recent_losses[-1] if state.recent_losses else None,
        "evaluation": evaluation,
        "stability": {
            "loss_spikes": state.spikes,
            "largest_grad_norm": state.largest_grad,
            "largest_activation": state.largest_activation,
        },
        "skipped_images": skipped,
        # Decoded in workers, the examples stay there (each is logged as a warning): only this process's are kept.
        "skipped_examples": [] if collate is None else collate.skipped_examples,
        "processes": accelerator.num_processes,
        # One sum of all parameters per process: equal when the ranks stayed in sync.
        "parameter_checksums": gather_object([sum(float(p.detach().double().sum()) for p in model.parameters())]),
    }


def _flat_config(*groups) -> dict:
    return {f"{type(group).__name__}.{key}": value for group in groups for key, value in asdict(group).items()}

"""The training loop's metrics: each optimizer step's, recorded into the TrainState, and every logging_steps a line
of metrics.jsonl, the trackers' figures and the progress bar's loss."""

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .arguments import TrainArguments
from .monitors import ActivationMonitor
from .resume import TrainState


class MetricsLog:
    """The losses (and penalty terms) of the batches of the optimizer step under way, and the images and time since
    the last logged step."""

    def __init__(self, accelerator: Accelerator, args: TrainArguments, total_steps: int, step: int, trackers: bool):
        self.accelerator, self.args, self.total_steps, self.trackers = accelerator, args, total_steps, trackers
        self.path = Path(args.output_dir) / "metrics.jsonl"
        self.progress = tqdm(total=total_steps, initial=step, disable=not accelerator.is_local_main_process)
        self.started, self.images, self.losses, self.penalties = time.perf_counter(), 0, [], []

    def batch(self, loss: torch.Tensor, penalty: torch.Tensor | None, images: int) -> None:
        """One batch of this process: its loss, its common-mode penalty term (None when off) and its image count."""
        self.losses.append(loss.detach())
        if penalty is not None:
            self.penalties.append(penalty.detach())
        self.images += images * self.accelerator.num_processes

    def step(self, state: TrainState, grad_norm: float | None, monitor: ActivationMonitor, lr: float) -> dict:
        """The metrics of the optimizer step just taken (`state.step`), recorded into `state`, logged when due."""
        step_loss = float(self.accelerator.reduce(torch.stack(self.losses).mean(), "mean"))  # the whole accumulation
        self.losses = []
        activation = monitor.take()
        state.record(step_loss, grad_norm, activation)
        metrics = {"step": state.step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm}
        if self.penalties:  # the task loss stays "loss": the penalty is logged beside it, unweighted
            metrics["common_mode_penalty"] = float(self.accelerator.reduce(torch.stack(self.penalties).mean(), "mean"))
            self.penalties = []
        if state.step % self.args.logging_steps == 0 or state.step == self.total_steps:
            elapsed = time.perf_counter() - self.started
            metrics |= {"images_per_s": self.images / elapsed, "max_activation": activation}
            self.started, self.images = time.perf_counter(), 0
            if self.accelerator.is_main_process:
                with open(self.path, "a") as log:
                    log.write(json.dumps(metrics) + "\n")
            if self.trackers:
                self.accelerator.log(metrics, step=state.step)
            self.progress.set_postfix(loss=f"{step_loss:.4f}")
        self.progress.update(1)
        return metrics

    def close(self) -> None:
        self.progress.close()

"""Training on accelerate, used by train/run.py: any variant on image data or a synthetic sink task.

One module per part: arguments (the run's arguments and their checks), runs (the two kinds of run, image data and
a sink task, behind the one interface the loop calls: model, batches, loss, evaluation, saved model), monitors (the
forward hooks on the blocks), metrics (each step's metrics and the log), threads (torch threads per process), resume
(checkpoints that resume exactly), loop (`train`)."""

from .arguments import DataArguments, ModelArguments, TrainArguments
from .loop import parameter_groups, train
from .monitors import CommonModePenalty
from .resume import CheckpointError, write_manifest
from .runs import paired_initialization
from .threads import torch_threads

__all__ = [
    "CheckpointError",
    "CommonModePenalty",
    "DataArguments",
    "ModelArguments",
    "TrainArguments",
    "paired_initialization",
    "parameter_groups",
    "torch_threads",
    "train",
    "write_manifest",
]

"""How many torch threads each training process runs."""

import os

import torch
from accelerate import Accelerator

from ..data import default_workers
from ..tasks import TASKS
from .arguments import DataArguments, TrainArguments


def torch_threads(cores: int, processes: int, loader_workers: int) -> int:
    """Torch threads for each of `processes` training processes on a machine with `cores` usable cores, each process
    with `loader_workers` loader workers: processes x (threads + workers) fit in the cores less one, at least 1.

    A worker decodes and augments on a core of its own (torch gives it one thread). The core left over is for the
    rest of the machine: with every core taken, any competing process stalls all of torch's threads at each barrier
    (on 2 busy cores, toy training ran at 46 images/s with 2 threads and 234 with 1).
    """
    return max(1, (cores - 1) // processes - loader_workers)


def set_torch_threads(args: TrainArguments, data_args: DataArguments, accelerator: Accelerator) -> dict:
    """Set this process's torch threads: --torch_threads, else OMP_NUM_THREADS as torch read it, else
    torch_threads() for this machine; how many and why, for the summary."""
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
        return {"threads": args.torch_threads, "from": "torch_threads"}
    if os.environ.get("OMP_NUM_THREADS"):  # the user's, or accelerate launch's for several processes
        return {"threads": torch.get_num_threads(), "from": "OMP_NUM_THREADS"}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))  # on this machine
    workers = 0
    if data_args.dataset not in TASKS:
        workers = default_workers() if args.dataloader_num_workers is None else args.dataloader_num_workers
    threads = torch_threads(cores, processes, workers)
    torch.set_num_threads(threads)
    return {"threads": threads, "from": "cores", "cores": cores, "processes": processes, "loader_workers": workers}


def threads_message(threads: dict) -> str:
    """The line that says how many torch threads each process runs and why, from set_torch_threads's record."""
    why = {"torch_threads": "--torch_threads", "OMP_NUM_THREADS": "OMP_NUM_THREADS"}.get(threads["from"])
    if why is None:
        why = (f"{threads['cores']} cores less one, {threads['processes']} process(es), "
               f"{threads['loader_workers']} loader workers each")  # fmt: skip
    return f"torch threads: {threads['threads']} per process ({why})"

"""Torch threads per training process: chosen from the cores, the processes and the loader workers (or given), set
while training, recorded in summary.json and said on stderr."""

import itertools
import os

import pytest
import torch
from test_training import arguments

from sink_models.training import torch_threads, train


@pytest.mark.parametrize(
    ("cores", "processes", "workers", "expected"),
    [(2, 1, 0, 1), (2, 2, 0, 1), (1, 1, 0, 1), (4, 1, 3, 1), (16, 1, 8, 7), (16, 2, 0, 7), (64, 8, 0, 7), (9, 2, 1, 3)],
)
def test_threads_for_cores_processes_and_workers(cores, processes, workers, expected):
    assert torch_threads(cores, processes, workers) == expected


def test_threads_are_the_most_that_leave_a_core_free():
    for cores, processes, workers in itertools.product(range(1, 33), range(1, 9), range(0, 9)):
        threads = torch_threads(cores, processes, workers)
        assert threads >= 1
        if threads > 1:  # more than the floor of one: everything fits beside one free core, and one more would not
            assert processes * (threads + workers) <= cores - 1
            assert processes * (threads + 1 + workers) > cores - 1


def run_threads(tmp_path, capsys, **fields) -> tuple[dict, set[int], list[str]]:
    """(summary["torch_threads"], torch's thread counts seen during the steps, the stderr lines about threads)."""
    seen = set()
    before = torch.get_num_threads()
    summary = train(*arguments(tmp_path, max_steps=2, **fields), on_step=lambda *_: seen.add(torch.get_num_threads()))
    assert torch.get_num_threads() == before  # put back
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("torch threads:")]
    return summary["torch_threads"], seen, lines


def test_the_run_chooses_records_and_says_its_threads(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(9)))  # 9 cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # as accelerate launch sets it for 2 processes on this machine
    recorded, seen, lines = run_threads(tmp_path / "a", capsys, dataloader_num_workers=1)
    assert recorded == {"threads": 3, "from": "cores", "cores": 9, "processes": 2, "loader_workers": 1}
    assert seen == {3}
    assert lines == ["torch threads: 3 per process (9 cores less one, 2 process(es), 1 loader workers each)"]


def test_the_option_wins_over_omp_num_threads_which_wins_over_the_cores(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    recorded, seen, lines = run_threads(tmp_path / "a", capsys, torch_threads=2)
    assert (recorded, seen, lines) == (
        {"threads": 2, "from": "torch_threads"}, {2}, ["torch threads: 2 per process (--torch_threads)"]
    )  # fmt: skip
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))  # the cores would give 1 thread
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # as if torch had read OMP_NUM_THREADS=3 at start: left alone
    try:
        recorded, seen, lines = run_threads(tmp_path / "b", capsys)
    finally:
        torch.set_num_threads(before)
    assert (recorded, seen, lines) == (
        {"threads": 3, "from": "OMP_NUM_THREADS"}, {3}, ["torch threads: 3 per process (OMP_NUM_THREADS)"]
    )  # fmt: skip

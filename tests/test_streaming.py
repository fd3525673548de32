"""Streaming: a parquet-sharded image dataset read as a stream, each process its own shards, epochs shuffled anew,
an exact resume; two processes training on it."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image
from safetensors.torch import load_file
from test_training import SMALL, Interrupted

from sink_models.data import StreamedRows
from sink_models.training import DataArguments, ModelArguments, TrainArguments, train

ROOT = Path(__file__).parents[1]


def sharded_dataset(root: Path, train_shards: int = 4, rows: int = 96) -> Path:
    """A local dataset as the Hub stores them: data/{train,test}-0000i-of-0000n.parquet, ClassLabel labels, 8 x 8
    images whose pixels encode the row number."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["even", "odd"])})
    rng = np.random.default_rng(0)
    for split, count, shards in (("train", rows, train_shards), ("test", 32, 2)):
        pictures = [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(count)]
        table = datasets.Dataset.from_dict({"image": pictures, "label": [i % 2 for i in range(count)]}, features)
        for index in range(shards):
            path = root / "data" / f"{split}-{index:05d}-of-{shards:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            table.shard(shards, index, contiguous=True).to_parquet(path)
    return root


def fingerprints(rows) -> list[str]:
    return [hashlib.sha256(row["image"]["bytes"]).hexdigest()[:12] for _, row in rows]


def test_each_process_streams_its_own_shards_and_the_epochs_differ(tmp_path):
    folder = str(sharded_dataset(tmp_path))
    everything = fingerprints(StreamedRows(folder, "train", ("image", "label"), (0, 1), seed=0, buffer=0))
    mine = [StreamedRows(folder, "train", ("image", "label"), (rank, 2), seed=0, buffer=16) for rank in (0, 1)]
    assert mine[0].shards == mine[1].shards == 2 and mine[0].labels == ["even", "odd"]
    first, second = (fingerprints(rows) for rows in mine)
    assert not set(first) & set(second) and sorted(first + second) == sorted(everything) and len(everything) == 96
    shards = [set(everything[24 * k : 24 * (k + 1)]) for k in range(4)]  # 24 rows a shard, in order
    assert [len(rows & set(first)) for rows in shards].count(24) == 2  # two whole shards each, no rows of others
    assert [len(rows & set(first)) for rows in shards].count(0) == 2
    again = fingerprints(mine[0])
    mine[0].set_epoch(1)
    assert fingerprints(mine[0]) != again and again == first  # the same epoch, the same order; a new epoch, another
    indices = [index for index, _ in mine[1]]
    assert indices == list(range(10**9 * 64, 10**9 * 64 + 48))  # unique over processes: they seed augmentation


def arguments(output_dir, folder, **fields):
    train_fields = {"output_dir": str(output_dir), "max_steps": 8, "per_device_batch_size": 8, "warmup_steps": 2,
                    "logging_steps": 1, "learning_rate": 3e-3, **fields}  # fmt: skip
    data = DataArguments(dataset=str(folder), streaming=True, shuffle_buffer=32, streaming_eval_images=16)
    return ModelArguments(variant="gated-reg", model_overrides=SMALL), data, TrainArguments(**train_fields)


def test_a_streamed_run_resumes_exactly(tmp_path):
    folder = sharded_dataset(tmp_path / "data")  # 96 rows: 12 batches of 8 an epoch
    train(*arguments(tmp_path / "straight", folder, max_steps=16))  # into the second epoch, reshuffled

    def stop(step, metrics):
        if step == 13:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(*arguments(tmp_path / "resumed", folder, max_steps=16, save_steps=10), on_step=stop)
    summary = train(
        *arguments(tmp_path / "resumed", folder, max_steps=16, save_steps=10, resume_from_checkpoint="auto")
    )
    assert summary["steps"] == 16 and summary["evaluation"]["images"] == 16
    a, b = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("straight", "resumed"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)


def test_two_processes_train_on_their_own_shards(tmp_path):
    folder = sharded_dataset(tmp_path / "data")
    options = [
        "--dataset", str(folder), "--streaming", "true", "--shuffle_buffer", "32", "--streaming_eval_images", "16",
        "--max_steps", "4", "--per_device_batch_size", "8", "--warmup_steps", "1", "--variant", "gated-reg",
        "--model_overrides", SMALL, "--output_dir", str(tmp_path / "run"), "--dataloader_num_workers", "1",
    ]  # fmt: skip
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip",
        "127.0.0.1", "--main_process_port", str(free_port()), str(ROOT / "train" / "run.py"), *options,
    ]  # fmt: skip
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4
    assert summary["evaluation"]["images"] == 32  # 16 held-out rows from each process's own test shard
    checksums = summary["parameter_checksums"]
    assert len(checksums) == 2 and checksums[0] == pytest.approx(checksums[1], rel=1e-12)  # the ranks stayed in sync


def test_streaming_needs_max_steps_and_an_image_dataset(tmp_path):
    folder = sharded_dataset(tmp_path / "data", train_shards=3)
    with pytest.raises(ValueError, match="max_steps: a streamed dataset has no length"):
        train(*arguments(tmp_path / "a", folder, max_steps=0))
    with pytest.raises(ValueError, match="'nop' is generated, not read"):
        model, data, args = arguments(tmp_path / "b", folder)
        data.dataset = "nop"
        train(model, data, args)

"""The accelerate configs in train/accelerate/, each launched as accelerate would launch it, on two CPU processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env
from conftest import free_port
from safetensors.torch import load_file

from sink_models.configuration_sink_vit import SinkViTConfig
from sink_models.modeling_sink_vit import SinkViTForImageClassification, SinkViTLayer
from sink_models.presets import preset_config

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "train" / "accelerate"
SMALL = json.dumps({"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64})
# gloo on CPU: ACCELERATE_USE_CPU=1, else accelerate starts unconnected single-process runs on a machine without GPUs.
CPU = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


def run(command: list[str], output_dir: Path, env: dict | None = None) -> dict:
    """Three steps of a tiny gated-reg model on digits (`command` ends where the recipe goes); the run's summary."""
    command = [*command, "train/recipes/digits-toy-gated-reg.yaml", "--max_steps", "3",
               "--per_device_batch_size", "8", "--model_overrides", SMALL, "--output_dir", str(output_dir)]  # fmt: skip
    env = os.environ | CPU | (env or {})
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    errors = [line for line in result.stderr.splitlines() if "Error:" in line]  # the root cause, before the tail
    assert result.returncode == 0, "\n".join([*errors[:5], result.stderr[-2000:]])
    return json.loads((output_dir / "summary.json").read_text())


@pytest.mark.parametrize("name", ["single-node-ddp", "multi-node", "fsdp"])
def test_config_loads_with_accelerate(name):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))  # raises on an unknown key
    assert config.mixed_precision == "bf16" and config.num_processes % config.num_machines == 0


def test_single_node_ddp_config_runs_two_processes(tmp_path):
    # No --multi_gpu: the config's distributed_type must start the two connected processes.
    launch = [*LAUNCH, "--config_file", str(CONFIGS / "single-node-ddp.yaml"), "--num_processes", "2",
              "--mixed_precision", "no", "train/run.py", "--config"]  # fmt: skip
    summary = run(launch, tmp_path / "run")
    assert summary["processes"] == 2 and summary["steps"] == 3
    assert len(set(summary["parameter_checksums"])) == 1


def test_slurm_template_starts_two_nodes_from_multi_node_config(tmp_path):
    # slurm.sbatch as slurm runs it on 2 nodes with 1 GPU each: srun starts the launch line once per node with
    # that node's SLURM_NODEID; here both "nodes" are this machine, the rendezvous host 127.0.0.1. Each launcher
    # starts one process, so a world of 2 means the ranks and the address reached both launchers.
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text(
        "#!/bin/bash\nwhile [[ $1 == -* ]]; do shift; done\n"
        'for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" & pids+=($!); done\n'
        'for pid in "${pids[@]}"; do wait "$pid" || exit 1; done\n'
    )
    (shims / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\n")
    for shim in shims.iterdir():
        shim.chmod(0o755)
    slurm = {"SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "1", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "7",
             "MAIN_PROCESS_PORT": str(free_port()),
             "PATH": f"{shims}:{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    # The recipe is the script's first argument, the options after it go to train/run.py.
    summary = run(["bash", "train/accelerate/slurm.sbatch"], tmp_path / "run", env=slurm)
    assert summary["processes"] == 2 and len(set(summary["parameter_checksums"])) == 1


def test_fsdp_config_builds_the_plugin_for_sinkvit(monkeypatch):
    # accelerate 1.15 cannot run FSDP on CPU processes: with ACCELERATE_USE_CPU=1 the state is MULTI_CPU, and only
    # the GPU-like types (MULTI_GPU, MULTI_XPU, ...) become FSDP, so the run would be plain DDP without a word.
    # So: the launcher's own parsing and environment, and the plugin each process would build from it.
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / "fsdp.yaml"), "train/run.py"])
    args = _validate_launch_command(args)[0]
    assert args.use_fsdp
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    plugin.set_auto_wrap_policy(SinkViTForImageClassification(preset_config("gated-reg", "toy")))  # a bad name raises
    assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {SinkViTLayer}


# What accelerate does for GPU processes, done for CPU ones (the only change): the FSDP config on gloo for real.
FSDP_ON_CPU = """
import runpy, sys
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

init = AcceleratorState.__init__


def fsdp_on_cpu(self, *args, **kwargs):
    init(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, FullyShardedDataParallelPlugin()


AcceleratorState.__init__ = fsdp_on_cpu
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# accelerate 1.15 runs FSDP on GPU processes only: the wrapper switches the CPU processes' state to FSDP.
def test_fsdp_config_trains_sharded_on_two_cpu_processes(tmp_path):
    (tmp_path / "fsdp_on_cpu.py").write_text(FSDP_ON_CPU)
    launch = [*LAUNCH, "--config_file", str(CONFIGS / "fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
              str(tmp_path / "fsdp_on_cpu.py"), "train/run.py", "--save_steps", "2", "--config"]  # fmt: skip
    summary = run(launch, tmp_path / "run")
    assert summary["processes"] == 2
    assert (tmp_path / "run" / "checkpoints" / "step_2" / "pytorch_model_fsdp_0").is_dir()  # sharded state
    folder = tmp_path / "run" / "model"
    saved = load_file(folder / "model.safetensors")
    whole = SinkViTForImageClassification(SinkViTConfig.from_pretrained(folder)).state_dict()
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in whole.items()}  # gathered, not shards

import os
import subprocess
import sys

from sink_models.processes import exit_launched

CODE = "from sink_models.processes import exit_launched\nprint('written', end='')\nexit_launched(3)\nprint(' returned')"


def test_a_launched_process_leaves_at_once_with_its_output_flushed():
    env = os.environ | {"WORLD_SIZE": "2"}
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=120)
    assert (done.returncode, done.stdout) == (3, "written")


def test_a_single_process_returns(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert exit_launched(3) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert exit_launched(3) is None

"""transformers' own common model tests, taken from the installed version's source distribution.

The sdist ships the top-level `tests/*.py` (`test_modeling_common.py` and its siblings) but not the
`generation/` and `exporters/` subpackages that `test_modeling_common.py` imports a mixin from: those two
get empty stand-ins. `GenerationTesterMixin` only matters to models that generate; `ExportTesterMixin`'s
torch.export checks are the ones this leaves out.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

PACKAGE = "transformers_tests"
STANDINS = {
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    # test_configuration_common.py imports it; ConfigTester is not used here.
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}


def cache_root() -> Path:
    return Path(os.environ.get("SINK_MODELS_TEST_CACHE", Path.home() / ".cache" / "sink-models"))


def fetch(version: str = transformers.__version__, root: Path | None = None) -> Path:
    """The folder holding package `transformers_tests` for `version`, downloaded once into the cache.

    Raises `RuntimeError` saying why when the sdist cannot be had (no registry, no such version).
    """
    home = (root or cache_root()) / f"transformers-{version}"
    if (home / PACKAGE / "test_modeling_common.py").is_file():
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent) as scratch:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "--dest", scratch, f"transformers=={version}"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        archives = list(Path(scratch).glob("transformers-*.tar.gz"))
        if done.returncode or not archives:
            raise RuntimeError(f"pip could not download the transformers {version} sdist: {done.stderr.strip()[-500:]}")
        staged = Path(scratch) / "home"
        package = staged / PACKAGE
        package.mkdir(parents=True)
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    (package / parts[2]).write_bytes(archive.extractfile(member).read())
        if not (package / "test_modeling_common.py").is_file():
            raise RuntimeError(f"the transformers {version} sdist has no tests/test_modeling_common.py")
        (package / "__init__.py").touch()
        for name, text in STANDINS.items():
            (package / name).parent.mkdir(exist_ok=True)
            (package / name).write_text(text)
            (package / name).with_name("__init__.py").touch()
        # Another process may have finished first: theirs is as good as ours.
        try:
            staged.rename(home)
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
    return home

"""Atomic writes: a temporary file or folder beside the target, renamed into place: a reader never sees half of one."""

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to `path` (its folder created), replacing any old file only once the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb" if isinstance(data, bytes) else "w") as file:
            file.write(data)
        os.chmod(temporary, 0o666 & ~umask())  # mkstemp makes it owner-only; these are ordinary files
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `folder` (its parent created) to write into; on success rename it to
    `folder`, replacing an earlier `folder` only then. On failure `folder` is left as it was; no staging remains."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    staging.chmod(0o777 & ~umask())  # mkdtemp makes it owner-only; the result is an ordinary folder
    try:
        yield staging
        _replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, folder: Path) -> None:
    """Rename `staging` to `folder`; an old `folder` is set aside first and restored if the rename fails."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    # Set aside, not deleted: os.replace cannot replace a non-empty folder, and the old one must survive a failure.
    retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
    os.replace(folder, retired / folder.name)
    try:
        os.replace(staging, folder)
    except OSError:
        os.replace(retired / folder.name, folder)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def finite(data, where: str = "") -> tuple[object, list[str]]:
    """`data` (nested dicts and lists) with every NaN and infinity replaced by None, and where they were
    (`heads[3].max_inflow`): JSON has no such numbers, and a report must say which of its figures are undefined."""
    if isinstance(data, float) and not math.isfinite(data):
        return None, [where]
    if isinstance(data, dict):
        pairs = [(key, finite(value, f"{where}.{key}" if where else str(key))) for key, value in data.items()]
        return {key: value for key, (value, _) in pairs}, [path for _, (_, paths) in pairs for path in paths]
    if isinstance(data, list | tuple):
        items = [finite(value, f"{where}[{i}]") for i, value in enumerate(data)]
        return [value for value, _ in items], [path for _, paths in items for path in paths]
    return data, []


def write_json(path: str | os.PathLike, data) -> Path:
    """`data` as indented JSON (no NaN: undefined values must be None), atomically."""
    return atomic_write(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def save_figure(figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """A matplotlib figure as PNG, atomically; the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return atomic_write(path, buffer.getvalue())


def umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""Atomic writes: a temporary file in the target's folder renamed into place, so a reader never sees half a file."""

import json
import os
import tempfile
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

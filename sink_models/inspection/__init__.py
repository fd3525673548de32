"""`sink-models inspect`: sink diagnostics of a vision model on a few images, as a command and a library call.

One module per stage: images (what to diagnose), the model and image processor (sink_models.loading), then
`diagnose`, causal (the
interventions, when asked for), tables (the tables and the printed text), report (the report folder, report.md);
command ties them together and parses options."""

from ..errors import InputError
from ..loading import load_model
from .command import InspectResult, cli, diagnose_images, inspect_model, main
from .images import DESCRIPTION, ImageSet, builtin_images, collect_images
from .report import render_markdown, write_report
from .tables import summary_text

__all__ = [
    "DESCRIPTION",
    "ImageSet",
    "InputError",
    "InspectResult",
    "builtin_images",
    "cli",
    "collect_images",
    "diagnose_images",
    "inspect_model",
    "load_model",
    "main",
    "render_markdown",
    "summary_text",
    "write_report",
]

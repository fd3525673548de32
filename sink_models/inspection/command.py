"""`sink-models inspect MODEL`: sink diagnostics of a vision model (a folder or a Hub id) on a few images, printed
and written as a report folder (report.md, report.json, heads.csv, figures). The library side is `inspect_model`."""

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..diagnostics import SinkReport, diagnose
from ..errors import InputError
from ..interventions import DEFAULT_EDITS, InterventionReport
from ..loading import load_model
from .causal import causal_text, check_heads, parse_edits, parse_heads, run_interventions
from .images import DESCRIPTION, ImageSet, _batches, collect_images
from .report import check_out, write_report
from .tables import summary_text


@dataclass
class InspectResult:
    """What `inspect_model` measured and wrote: the report, its folder (None if not written), the images and the
    interventions' report (None unless asked for)."""

    report: SinkReport
    folder: Path | None
    images_from: str
    images: list[str]
    skipped: list[str]
    interventions: InterventionReport | None = None


def inspect_model(
    model_id_or_path: str,
    *,
    images: str | os.PathLike | Sequence[Image.Image] | None = None,
    dataset: str | None = None,
    split: str = "train",
    max_images: int = 16,
    out: str | os.PathLike | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    batch_size: int = 8,
    device: str | None = None,
    progress: bool = True,
    interventions: bool = False,
    edits: str | Sequence[str] | None = None,
    heads: str | Sequence[tuple[int, int]] | None = None,
) -> InspectResult:
    """Diagnose the sinks of a model folder or Hub id on `images` (a folder, PIL images), a `datasets` `dataset`
    or, with neither, the built-in set; write the report folder `out` unless it is None. With `interventions`, also
    edit `heads` ((layer, head) pairs or "L:H,L:H"; default: those the diagnostics select) once per edit of `edits`
    (default: `DEFAULT_EDITS`) on the same images (`sink_models.interventions.intervene`).

    Every problem with the inputs raises an `InputError` before anything is written; `out` is replaced only
    once the new report is complete, and only if it is empty or an earlier report folder."""
    for name, value in (("max_images", max_images), ("batch_size", batch_size)):
        if type(value) is not int or value < 1:
            raise InputError(f"{name}: got {value!r}; allowed: a positive integer.")
    if not interventions and (edits is not None or heads is not None):
        raise InputError("edits, heads: apply with interventions=True (--interventions) only.")
    edits, heads = parse_edits(edits), parse_heads(heads)
    if out is not None:
        check_out(Path(out))
    # The images first: a bad folder fails in a second, before a model of gigabytes is fetched.
    found = collect_images(images, dataset=dataset, split=split, max_images=max_images)
    model, processor, mode = load_model(
        model_id_or_path,
        revision=revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if interventions:
        check_heads(model, heads)  # a head outside the model, or an unsupported architecture: fail before the work
    report = diagnose_images(model, processor, found, mode, batch_size, progress=progress)
    report.summary["inputs"] = {
        "model": model_id_or_path,
        "revision": revision,
        "images_from": found.source,
        "images": found.used,
        "skipped": found.skipped,
    }
    causal = None
    if interventions:
        causal = run_interventions(model, processor, found, batch_size, report, edits, heads, progress)
    folder = None if out is None else write_report(report, Path(out), causal)
    return InspectResult(report, folder, found.source, found.used, found.skipped, causal)


def diagnose_images(
    model: torch.nn.Module,
    processor,
    found: ImageSet,
    mode: str = "RGB",
    batch_size: int = 8,
    *,
    progress: bool = False,
    watch: Callable[[Iterator[dict]], Iterator[dict]] | None = None,
) -> SinkReport:
    """`diagnose` on the images of `found` through the model's image processor; `watch` wraps the batches (progress,
    a deadline). Converts `found.images` to PIL `mode` in place and records in `found` the images the processor
    cannot take (skipped). An unsupported architecture, or a processor that takes none of them, raises an
    `InputError` (its first line)."""
    if mode != "RGB":
        found.images = [image.convert(mode) for image in found.images]
    batches = _batches(processor, found, batch_size, progress)
    try:
        # No max_images here: the set is already that small, and diagnose then reads every batch to the end.
        return diagnose(model, batches if watch is None else watch(batches))
    except (ValueError, TypeError) as error:  # an unsupported architecture (names the supported ones), a bad processor
        raise InputError(_line(error)) from None


def _line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# Command line -----------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The options of `sink-models inspect`."""
    p = argparse.ArgumentParser(
        prog="sink-models inspect",
        description="Attention-sink diagnostics of a vision transformer on a few images: prints a summary and a "
        "per-layer table, and writes a report folder (report.md, report.json, heads.csv, PNG figures).",
        epilog=f"With neither --images nor --dataset it uses {DESCRIPTION}. Exit status 2 on bad input, with one "
        "line on stderr.",
    )
    p.add_argument("model", help="a model folder or a Hub id (org/name)")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--images",
        metavar="FOLDER",
        help="the files directly in FOLDER (not its subfolders), in name order; files "
        "PIL cannot read are skipped and listed in the report",
    )
    source.add_argument("--dataset", metavar="ID", help="a datasets id or local imagefolder path (first Image column)")
    p.add_argument("--split", default=None, help="the split of --dataset (default: train)")
    p.add_argument("--max-images", type=_positive, default=16, metavar="N", help="at most N images (default: 16)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="the report folder (default: ./inspect-<model name>); an earlier report there "
        "is replaced once the new one is complete",
    )
    p.add_argument("--revision", help="a Hub revision (branch, tag or commit) of MODEL")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the checkpoint's own python code, if you trust it "
        "(never needed for SinkViT checkpoints: the installed classes load them)",
    )
    p.add_argument(
        "--attn-implementation", metavar="NAME", help="eager, sdpa, flex_attention... (default: the model's)"
    )
    p.add_argument("--batch-size", type=_positive, default=8, metavar="B", help="images per forward pass (default: 8)")
    p.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda if available, else cpu)")
    p.add_argument(
        "--interventions",
        action="store_true",
        help="then edit sink heads one at a time on the same images (the paper's causal checks; one forward per "
        "head and edit): adds interventions.json, interventions.png and a section to report.md",
    )
    p.add_argument("--edits", metavar="A,B", help=f"the edits of --interventions (default: {','.join(DEFAULT_EDITS)})")
    p.add_argument(
        "--heads", metavar="L:H,L:H", help="the heads of --interventions (default: those with the most sink events)"
    )
    return p


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a positive integer")
    return int(text)


def model_name(source: str) -> str:
    """A folder's or a Hub id's last part: `facebook/dinov2-small` -> `dinov2-small`."""
    return Path(source).resolve().name if os.path.isdir(source) else source.rstrip("/").split("/")[-1]


def main(argv: Sequence[str] | None = None) -> int:
    """`sink-models inspect ...`: run `inspect_model`, print the summary; 2 and one line on stderr on bad input."""
    from transformers.utils import logging as hf_logging

    p = parser()
    args = p.parse_args(argv)
    if args.split is not None and args.dataset is None:
        p.error("--split: applies to --dataset only")
    if not args.interventions and (args.edits is not None or args.heads is not None):
        p.error("--edits, --heads: apply with --interventions only")
    out = args.out or f"inspect-{model_name(args.model)}"
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' weight-loading bar: noise beside ours, and before an error
    try:
        result = inspect_model(
            args.model,
            images=args.images,
            dataset=args.dataset,
            split=args.split or "train",
            max_images=args.max_images,
            out=out,
            revision=args.revision,
            trust_remote_code=args.trust_remote_code,
            attn_implementation=args.attn_implementation,
            batch_size=args.batch_size,
            device=args.device,
            interventions=args.interventions,
            edits=args.edits,
            heads=args.heads,
        )
    except InputError as error:
        print(f"sink-models inspect: {error}", file=sys.stderr)
        return 2
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    print(summary_text(result.report))
    if result.interventions is not None:
        print("\n" + causal_text(result.interventions))
    print(f"\nreport: {result.folder / 'report.md'} (with report.json, heads.csv and the figures)")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """The `sink-models` console script: `sink-models inspect ...`; help otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["inspect"]:
        return main(argv[1:])
    print("usage: sink-models inspect MODEL [options]   (sink-models inspect --help for the options)")
    return 0 if not argv or argv[0] in ("-h", "--help") else 2

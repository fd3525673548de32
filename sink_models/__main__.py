"""`python -m sink_models`: build a SinkViT, save it as a Hub folder, reload it with trust_remote_code, show outputs.

`python -m sink_models inspect MODEL ...` runs `sink-models inspect` instead (see sink_models/inspection/);
`python -m sink_models canvas OUT` writes the canvas-digits images the zoo was trained and evaluated on."""

import argparse
import os
import sys
import tempfile

if sys.argv[1:2] == ["inspect"]:  # before the demo's offline switch below: inspect may fetch Hub ids
    from sink_models.inspection import main as inspect_main

    sys.exit(inspect_main(sys.argv[2:]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: never look for a Hub


def canvas(argv: list[str]) -> int:
    """`python -m sink_models canvas OUT`: the canvas-digits images as an imagefolder; 2 and one line on bad input."""
    from sink_models.data import Canvas, parse_options, write_canvas_folder
    from sink_models.errors import InputError

    parser = argparse.ArgumentParser(prog="python -m sink_models canvas", description=write_canvas_folder.__doc__)
    parser.add_argument("out", help="a new folder: OUT/{train,test}/<digit>/<row>.png")
    parser.add_argument("--options", default="{}", help="the recipe's dataset_options, e.g. '{\"size\": 64}'")
    parser.add_argument("--splits", nargs="+", default=["train", "test"], help="train, test or both")
    args = parser.parse_args(argv)
    try:
        folder = write_canvas_folder(args.out, Canvas(**parse_options(args.options)), tuple(args.splits))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = {split: sum(1 for _ in (folder / split).rglob("*.png")) for split in args.splits}
    print(f"wrote {', '.join(f'{n} {split}' for split, n in counts.items())} canvases to {folder}")
    return 0


if sys.argv[1:2] == ["canvas"]:
    sys.exit(canvas(sys.argv[2:]))

import torch  # noqa: E402
from transformers import AutoModel, AutoModelForImageClassification  # noqa: E402

from . import SIZES, VARIANTS, SinkViTForImageClassification, preset_config  # noqa: E402
from .checkpoint import save_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="gated-reg", choices=list(VARIANTS))
    parser.add_argument("--size", default="toy", choices=list(SIZES))
    parser.add_argument("--out", default=None, help="folder to save into (default: a temporary one)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = SinkViTForImageClassification(preset_config(args.variant, args.size, num_labels=10)).eval()
    out = args.out or os.path.join(tempfile.mkdtemp(prefix="sink-vit-"), f"vit-{args.size}-{args.variant}")
    folder = save_checkpoint(model, out)
    print(f"saved {args.variant} ({args.size}, {sum(p.numel() for p in model.parameters()):,} parameters) to {folder}")
    print("  files:", ", ".join(sorted(os.listdir(folder))))

    head = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    print(f"reloaded with trust_remote_code: {type(head).__module__}.{type(head).__name__}, {type(base).__name__}")

    config = model.config
    x = torch.randn(2, config.num_channels, config.image_size, config.image_size)
    with torch.no_grad():
        expected = model(x).logits
        outputs = head(x, output_hidden_states=True, output_gate_values=True)
        tokens = base(x).last_hidden_state
    print(f"logits {tuple(outputs.logits.shape)}: {outputs.logits[0, :5].tolist()}")
    difference = (outputs.logits - expected).abs().max().item()
    print(f"max |reloaded - original| logits: {difference:.2e}")
    if difference > 1e-5:
        raise SystemExit(f"the reloaded model does not reproduce the original (max difference {difference:.2e})")
    print(
        f"tokens per image: {tokens.shape[1]} = CLS + {config.num_register_tokens} registers + "
        f"{tokens.shape[1] - config.num_prefix_tokens} patches; hidden states: {len(outputs.hidden_states)}"
    )
    if outputs.gate_values:
        means = ", ".join(f"{g.mean().item():.3f}" for g in outputs.gate_values)
        print(f"mean {config.attention_gate} gate per layer: {means}")


if __name__ == "__main__":
    main()

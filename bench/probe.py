"""The dense probe's L-BFGS loss against torch's cross-entropy on the same patches, side by side.

    python bench/probe.py                     # the canvas zoo's probe: 1,438 x 64 patches, 64 channels, 11 classes
    python bench/probe.py --patches 20000 --rounds 3

One evaluation of the loss and its gradient, as L-BFGS makes a few hundred per fit: sink_models.probes.linear'
`_cross_entropy` (classes x patches, log-sum-exp along contiguous memory) against `F.cross_entropy` on the
patches x classes logits of the same linear head. Each round times both (best of three calls) in a rotating order;
the ratio is taken within a round and the median over rounds printed. Loss and gradients are checked equal first.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from sink_models.probes.linear import _cross_entropy


def evaluations(patches: int, channels: int, classes: int, seed: int = 0) -> dict:
    """name -> a function that computes the loss and its gradient once, on the same random patches."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(patches, channels, generator=generator)
    y = torch.randint(0, classes, (patches,), generator=generator)
    head = nn.Linear(channels, classes)
    xt = x.t().contiguous()

    def ours():
        head.zero_grad()
        value = _cross_entropy(head, xt, y)
        value.backward()
        return value.detach(), head.weight.grad.clone()

    def torch_cross_entropy():
        head.zero_grad()
        value = F.cross_entropy(head(x), y)
        value.backward()
        return value.detach(), head.weight.grad.clone()

    return {"F.cross_entropy (patches x classes)": torch_cross_entropy, "_cross_entropy (classes x patches)": ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=1438 * 64)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    runs = evaluations(args.patches, args.channels, args.classes)
    (peer_loss, peer_grad), (loss, grad) = (run() for run in runs.values())
    torch.testing.assert_close(loss, peer_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, peer_grad, rtol=1e-4, atol=1e-6)
    names, times = list(runs), {name: [] for name in runs}
    for round_ in range(args.rounds):
        for name in names[round_ % 2 :] + names[: round_ % 2]:
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                runs[name]()
                best = min(best, time.perf_counter() - start)
            times[name].append(best)
    peer = names[0]
    threads = torch.get_num_threads()
    print(f"{args.patches} patches x {args.channels} channels, {args.classes} classes; {threads} threads")
    print("| loss + gradient | ms | speed-up |\n|---|---:|---:|")
    for name in names:
        ratio = statistics.median(p / t for p, t in zip(times[peer], times[name], strict=True))
        print(f"| {name} | {statistics.median(times[name]) * 1000:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()

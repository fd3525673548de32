"""Forward hooks on the blocks while training: the common-mode penalty and the largest activation."""

import torch


class CommonModePenalty:
    """The paper's Eq. 5, summed over layers: E(mean_i o_i) / (E(O) + 1e-12) per layer, with O the attention
    update after o_proj (before the residual) and E the mean squared entry over the batch. Penalising the part
    of the update that every token shares leaves broadcasting to the global pathway."""

    def __init__(self, blocks):
        self.terms: list[torch.Tensor] = []
        self.handles = [block.attention.register_forward_hook(self._hook) for block in blocks]

    def _hook(self, module, args, output):
        update = output[0].float()
        common = update.mean(dim=1).pow(2).mean()
        self.terms.append(common / (update.pow(2).mean() + 1e-12))

    def take(self) -> torch.Tensor:
        terms, self.terms = self.terms, []
        return torch.stack(terms).sum()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ActivationMonitor:
    """The largest |activation| leaving any block since the last `take()` (forward hooks on the blocks)."""

    def __init__(self, blocks):
        self.largest = None
        self.handles = [block.register_forward_hook(self._hook) for block in blocks]

    def _hook(self, module, args, output):
        tokens = output[0] if isinstance(output, tuple) else output
        peak = tokens.detach().abs().amax()
        # Stays on the device: one host sync per step (in take), not one per block.
        self.largest = peak if self.largest is None else torch.maximum(self.largest, peak)

    def take(self) -> float:
        largest, self.largest = self.largest, None
        return 0.0 if largest is None else float(largest)

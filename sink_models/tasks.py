"""The paper's two synthetic sink tasks (docs/science.md section 5) and the toy model that learns them.

A batch of L tokens x_i ~ N(0, I_d) is a 1 x L "image" with d channels and patch size 1, so token i of a SinkViT
is x_i and its CLS token plays the learned null (BOS) token. Batches are generated on the fly, each from its own
seed (run seed, step, process), so a run and its resumption see the same data.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .configuration_sink_vit import SinkViTConfig
from .errors import InputError
from .modeling_sink_vit import SinkViTModel

TASKS = ("nop", "broadcast")


@dataclass
class SinkTask:
    """`nop`: y_i = 0 if <x_i, v> > 0 else x_i. `broadcast`: y_i = x_i + alpha x_{j*} R, j* = argmax_j <x_j, u>.

    v and u are unit vectors orthogonal to the all-ones vector (a LayerNorm would delete that component); R is a
    fixed random orthogonal matrix. All three come from `seed`.
    """

    kind: str
    dim: int = 32
    length: int = 16
    seed: int = 0
    alpha: float = 1.0

    def __post_init__(self):
        if self.kind not in TASKS:
            raise InputError(f"task: got {self.kind!r}; allowed: {', '.join(TASKS)}.")
        generator = torch.Generator().manual_seed(self.seed)
        direction = torch.randn(self.dim, generator=generator)
        direction -= direction.mean()
        self.direction = direction / direction.norm()
        self.rotation = torch.linalg.qr(torch.randn(self.dim, self.dim, generator=generator)).Q

    def targets(self, tokens: torch.Tensor) -> torch.Tensor:
        """y for tokens x of shape (batch, length, dim)."""
        score = tokens @ self.direction
        if self.kind == "nop":
            return torch.where((score > 0)[..., None], torch.zeros_like(tokens), tokens)
        chosen = tokens[torch.arange(len(tokens)), score.argmax(dim=1)]  # x_{j*}: batch, dim
        return tokens + self.alpha * (chosen @ self.rotation)[:, None, :]

    def batch(self, step: int, size: int, process: int = 0) -> dict[str, torch.Tensor]:
        """Batch number `step` of process `process`: `pixel_values` (size, dim, 1, length) and `targets`."""
        generator = torch.Generator().manual_seed(hash((self.seed, step, process)) % 2**63)
        tokens = torch.randn(size, self.length, self.dim, generator=generator)
        return {"pixel_values": tokens.transpose(1, 2).unsqueeze(2), "targets": self.targets(tokens)}

    def model_config(self, **fields) -> SinkViTConfig:
        """A SinkViT reading a 1 x L image with patch size 1; attention without biases (docs/science.md section 5)."""
        defaults = {
            "image_size": (1, self.length),
            "patch_size": 1,
            "num_channels": self.dim,
            "hidden_size": self.dim,
            "num_hidden_layers": 1 if self.kind == "nop" else 2,
            "num_attention_heads": 1,
            "intermediate_size": 0 if self.kind == "nop" else 4 * self.dim,
            "qkv_bias": False,
            "proj_bias": False,
        }
        return SinkViTConfig(**{**defaults, **fields})


class TokenRegressor(nn.Module):
    """The paper's toy model on a SinkViT: the tokens x_i are the residual stream and the output tokens are the
    predictions, O = x + W_O A V (+ MLP), trained with MSE on tokens 1..L (CLS and registers excluded).

    So the patch embedding is a fixed identity and there is no final norm and no read-out: a learned read-out
    would let the model solve the NOP task in ways the paper's toy cannot (e.g. a gate that opens for NOP
    queries). Position embeddings are learned, or fixed at zero with `learn_positions=False` (the NOP task).
    """

    def __init__(self, config: SinkViTConfig, learn_positions: bool = True):
        super().__init__()
        if config.hidden_size != config.num_channels:
            raise InputError(
                f"hidden_size: got {config.hidden_size}; the toy's residual stream is its tokens, so it must equal "
                f"num_channels ({config.num_channels})."
            )
        self.config = config
        self.sink_vit = SinkViTModel(config)
        self.sink_vit.layernorm = nn.Identity()
        embeddings = self.sink_vit.embeddings
        projection = embeddings.patch_embeddings.projection
        with torch.no_grad():
            projection.weight.copy_(torch.eye(config.num_channels).view(*projection.weight.shape))
            projection.bias.zero_()
            if not learn_positions:
                embeddings.position_embeddings.zero_()
        projection.requires_grad_(False)
        embeddings.position_embeddings.requires_grad_(learn_positions)

    def forward(self, pixel_values: torch.Tensor, targets: torch.Tensor | None = None) -> dict:
        predictions = self.sink_vit(pixel_values).last_hidden_state[:, self.config.num_prefix_tokens :]
        loss = None if targets is None else nn.functional.mse_loss(predictions, targets)
        return {"loss": loss, "predictions": predictions}

"""The paper's per-(image, head) sink quantities for one layer (SCIENCE.md sections 2-3), computed exactly.

Everything that depends on the output projection goes through the head's d_h x d_h matrix P = M M^T,
M = W_O^h^T diag(gamma) (d_h x C): ||u_j||^2 = v_j^T P v_j, ||U||_F^2 = tr(G P) with G = o^T o, and the
non-zero eigenvalues of U U^T are those of F^T G F with P = F F^T, a d_h x d_h problem instead of N x N.
"""

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Thresholds:
    """The paper's operational rule; every number is a parameter."""

    routed: float = 0.5  # a query is routed to s when A_is >= routed
    event: float = 0.9  # a sink event when routed_frac >= event
    nop_ratio: float = 0.2  # NOP when ratio_out <= nop_ratio
    broadcast_ratio: float = 0.5  # broadcast when ratio_out >= broadcast_ratio ...
    broadcast_rank: float = 1.5  # ... and stable rank <= broadcast_rank
    cls_sink_eps: float = 0.3  # Gu et al.'s sink rate: CLS inflow > eps
    gate_closed: float = 0.1  # a head's gate counts as closed for a query below this

    def to_dict(self) -> dict:
        return asdict(self)


class HeadProjection:
    """P = W_O^h^T diag(gamma)^2 W_O^h per head (heads, d_h, d_h) in float64, and on demand F with F F^T = P."""

    def __init__(self, o_weight: torch.Tensor, gamma: torch.Tensor | None, num_heads: int):
        self.o_weight, self.gamma, self.num_heads = o_weight.detach(), gamma, num_heads
        scaled = self._scaled()
        self.p = scaled.transpose(1, 2) @ scaled
        self.p32 = self.p.float()
        self._factor = None

    def _scaled(self) -> torch.Tensor:
        """diag(gamma) W_O^h per head: (heads, C, d_h), float64."""
        channels, width = self.o_weight.shape
        w = self.o_weight.double().reshape(channels, self.num_heads, width // self.num_heads).permute(1, 0, 2)
        return w if self.gamma is None else w * self.gamma.detach().double().reshape(1, channels, 1)

    @property
    def factor(self) -> torch.Tensor:
        """F = T^T from the QR decomposition diag(gamma) W_O^h = Q T: P = T^T T (a singular P is fine)."""
        if self._factor is None:
            self._factor = torch.linalg.qr(self._scaled(), mode="r").R.transpose(-1, -2)
        return self._factor


def layer_metrics(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    projection: HeadProjection,
    num_prefix_tokens: int,
    thresholds: Thresholds,
) -> dict[str, torch.Tensor]:
    """Per (image, head) quantities of one layer from its queries, keys and values, each (batch, tokens, heads, d_h).

    Returns float64 / int64 / bool tensors of shape (batch, heads) keyed by name, plus `inflow` (batch, heads,
    tokens): the mean attention each key receives. `stable_rank` and `rank1_energy` are computed for sink events,
    where they are reported, and NaN elsewhere. The attention matrix of this one layer is the only N x N tensor
    held.
    """
    q, k, v = (t.float().transpose(1, 2) for t in (query, key, value))  # B, H, N, d_h
    # Softmax in place: one N x N tensor per head is the whole memory cost of a layer.
    attention = q @ k.transpose(-1, -2)  # B, H, N(queries), N(keys)
    attention -= attention.amax(dim=-1, keepdim=True)
    attention = attention.mul_(scaling).exp_()
    attention /= attention.sum(dim=-1, keepdim=True)
    tokens = attention.shape[-1]
    inflow = attention.mean(dim=2)
    sink = inflow.argmax(dim=-1)
    to_sink = attention.gather(-1, sink[:, :, None, None].expand(-1, -1, tokens, 1)).squeeze(-1)
    routed_frac = (to_sink >= thresholds.routed).double().mean(dim=-1)
    output = attention @ v  # o = A v: B, H, N, d_h
    del attention, to_sink

    # Token-sized products in float32 (they only feed norms and d_h x d_h sums); the small problems in float64.
    u_norm = ((v @ projection.p32) * v).sum(-1).clamp_min(0).sqrt().double()  # ||u_j|| = sqrt(v_j^T P v_j)
    v_norm = v.norm(dim=-1).double()
    gram = (output.transpose(-1, -2) @ output).double()  # G: B, H, d_h, d_h
    energy = (gram * projection.p).sum((-2, -1)).clamp_min(0)  # ||U||_F^2 = tr(G P)
    defined = energy > 1e-30
    event = routed_frac >= thresholds.event
    # sigma_1^2 (an eigenvalue problem) only where it is reported: for sink events.
    top = torch.full_like(energy, torch.nan)
    if event.any():
        factor = projection.factor[event.nonzero()[:, 1]]  # the F of each event's head
        top[event] = torch.linalg.eigvalsh(factor.transpose(-1, -2) @ gram[event] @ factor)[..., -1].clamp_min(0)
    stable_rank = torch.where(defined, energy / top.clamp_min(1e-300), torch.nan)
    mean = output.mean(dim=2).double()  # mean_i o_i: B, H, d_h
    mean_update = torch.einsum("bhd,hde,bhe->bh", mean, projection.p, mean)  # ||mean_i U_i||^2
    common_mode = torch.where(defined, tokens * mean_update / energy.clamp_min(1e-300), torch.nan)

    ratio_out = _sink_ratio(u_norm, sink)
    klass = torch.full_like(sink, 2)  # other
    broadcast = (ratio_out >= thresholds.broadcast_ratio) & (stable_rank <= thresholds.broadcast_rank)
    klass = torch.where(broadcast, 1, klass)
    klass = torch.where(ratio_out <= thresholds.nop_ratio, 0, klass)
    token_type = torch.where(sink == 0, 0, torch.where(sink < num_prefix_tokens, 1, 2))
    return {
        "sink": sink,
        "max_inflow": inflow.gather(-1, sink[..., None]).squeeze(-1).double(),
        "cls_inflow": inflow[..., 0].double(),
        "routed_frac": routed_frac,
        "event": event,
        "ratio_out": ratio_out,
        "ratio_head": _sink_ratio(v_norm, sink),
        "stable_rank": stable_rank,
        "rank1_energy": torch.where(defined, top / energy.clamp_min(1e-300), torch.nan),
        "common_mode": common_mode,
        "class": klass,  # 0 NOP, 1 broadcast, 2 other
        "token_type": token_type,  # 0 CLS, 1 register, 2 patch
        "inflow": inflow,
    }


def _sink_ratio(norms: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """||x_s|| / mean_{j != s} ||x_j|| for norms (batch, heads, tokens)."""
    at_sink = norms.gather(-1, sink[..., None]).squeeze(-1)
    others = (norms.sum(-1) - at_sink) / (norms.shape[-1] - 1)
    # A zero sink value is a NOP even when every value is zero (a pruned head): 0, not 0/0.
    return torch.where(at_sink == 0, 0.0, at_sink / others)


def gate_metrics(gate: torch.Tensor, num_heads: int, closed: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (image, head) mean gate and share of queries whose gate for the head is below `closed`.

    `gate` is (batch, tokens, heads) for a headwise gate or (batch, tokens, channels) for an elementwise one,
    whose per-query value for a head is the mean over the head's channels.
    """
    per_head = gate.double().reshape(*gate.shape[:2], num_heads, -1).mean(-1)  # B, N, H
    return per_head.mean(1), (per_head < closed).double().mean(1)


def token_norm_metrics(hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the largest token norm and its ratio to the median token norm (the usual median)."""
    norms = hidden_states.double().norm(dim=-1)
    largest = norms.max(dim=-1).values
    return largest, largest / torch.quantile(norms, 0.5, dim=-1)

"""The paper's per-(image, head) sink quantities for one layer (docs/science.md sections 2-3), computed exactly.

Everything that depends on the output projection goes through the head's d_h x d_h matrix P = M M^T,
M = W_O^h^T diag(gamma) (d_h x C), and a factor P = F F^T: ||u_j|| = ||F^T v_j||, ||U||_F^2 = tr(G P) with
G = o^T o, and the non-zero eigenvalues of U U^T are those of F^T G F, a d_h x d_h problem instead of N x N.
"""

from dataclasses import asdict, dataclass, replace

import torch

from ..errors import InputError
from ..vocabulary import SinkClass, TokenType

QUERY_SETS = ("all", "patches")


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
    # The queries routed_frac is taken over: all of them (the paper's rule) or the patches only, so that a model's
    # CLS and register queries, which rarely route to the sink, do not raise the bar for models that have more.
    queries: str = "all"

    def __post_init__(self):
        if self.queries not in QUERY_SETS:
            raise InputError(f"thresholds.queries: got {self.queries!r}; allowed: {', '.join(QUERY_SETS)}.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Grid:
    """The rule's choices a sensitivity analysis varies: every event threshold x routed threshold x query set; the
    class thresholds stay those of the `Thresholds`."""

    event: tuple[float, ...] = (0.8, 0.9, 0.95)
    routed: tuple[float, ...] = (0.3, 0.5, 0.7)
    queries: tuple[str, ...] = QUERY_SETS

    def __post_init__(self):
        for name in ("event", "routed"):
            values = getattr(self, name)
            numbers = isinstance(values, tuple | list) and all(
                isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 1 for v in values
            )
            if not values or not numbers or len(set(values)) < len(values):
                raise InputError(f"grid.{name}: got {values!r}; allowed: a tuple of distinct numbers in (0, 1].")
        queries = self.queries
        if (
            not isinstance(queries, tuple | list)
            or not queries
            or not set(queries) <= set(QUERY_SETS)
            or len(set(queries)) < len(queries)
        ):
            raise InputError(
                f"grid.queries: got {queries!r}; allowed: a tuple of distinct ones of {', '.join(QUERY_SETS)}."
            )

    def to_dict(self) -> dict:
        return {name: list(value) for name, value in asdict(self).items()}


class HeadProjection:
    """P = W_O^h^T diag(gamma)^2 W_O^h per head (heads, d_h, d_h) and F with F F^T = P, in float64."""

    def __init__(self, o_weight: torch.Tensor, gamma: torch.Tensor | None, num_heads: int):
        channels, width = o_weight.shape
        # diag(gamma) W_O^h per head: (heads, C, d_h).
        scaled = o_weight.detach().double().reshape(channels, num_heads, width // num_heads).permute(1, 0, 2)
        if gamma is not None:
            scaled = scaled * gamma.detach().double().reshape(1, channels, 1)
        self.p = scaled.transpose(1, 2) @ scaled
        # Cholesky is ten times cheaper than QR; a singular P (a pruned head, a zero gamma) needs the QR factor
        # diag(gamma) W_O^h = Q T, P = T^T T.
        self.factor, info = torch.linalg.cholesky_ex(self.p)
        if info.any():
            self.factor = torch.linalg.qr(scaled, mode="r").R.transpose(-1, -2)


def layer_metrics(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    projection: HeadProjection,
    layout: tuple[int, int],
    thresholds: Thresholds,
    output: torch.Tensor,
    bias: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    chunks: int = 4,
    grid: Grid | None = None,
) -> dict[str, torch.Tensor]:
    """Per (image, head) quantities of one layer from the kernel's queries, keys and values, each (batch, heads,
    tokens, d_h), its mask or logit bias (None, boolean: True attends, or additive; broadcastable to (batch, heads,
    tokens, tokens)) and its output o = A v, (batch, tokens, heads, d_h). `layout` is (CLS tokens, prefix tokens);
    `valid` (batch, tokens), if given, marks the tokens that count: padding is neither a query nor a token.

    Returns float64 / int64 / bool tensors of shape (batch, heads) keyed by name, plus `inflow` (batch, heads,
    tokens): the mean attention each key receives. The quantities reported for sink events only (`ratio_out`,
    `ratio_head`, `stable_rank`, `rank1_energy`, `class`) are computed for them alone, and are NaN (class: other)
    elsewhere. The attention maps are built for one head and a group of images at a time, about 1/`chunks` of the
    layer's maps: the only N x N tensor held.

    With a `grid`, also `grid_routed` (batch, heads, routed thresholds, query sets): the routed fraction under each
    of the grid's choices, and `grid_class`: the class of every record that is an event under some choice of it.
    """
    if key.shape[1] != query.shape[1]:  # grouped keys and values: each serves several query heads
        key, value = (t.repeat_interleave(query.shape[1] // t.shape[1], dim=1) for t in (key, value))
    tokens = query.new_full((query.shape[0],), query.shape[2], dtype=torch.float64)
    if valid is not None:
        tokens = valid.double().sum(-1)
    stats = _attention_statistics(query, key, value, scaling, projection, output, bias, valid, chunks)
    inflow, to_sink, gram, energy, mean = stats
    sink = inflow.argmax(dim=-1)
    routed_frac = _routed_fraction(to_sink, tokens, valid, layout[1], thresholds)
    event = routed_frac >= thresholds.event
    measured = event  # the records whose sink quantities are computed
    if grid is not None:
        grid_routed = _grid_routed(to_sink, tokens, valid, layout[1], thresholds, grid)
        measured = event | (grid_routed >= min(grid.event)).flatten(-2).any(-1)

    energy = energy.clamp_min(0)
    defined = energy > 1e-30
    mean = mean.double()
    mean_update = torch.einsum("bhd,hde,bhe->bh", mean, projection.p, mean)  # ||mean_i U_i||^2
    common_mode = torch.where(defined, tokens[:, None] * mean_update / energy.clamp_min(1e-300), torch.nan)

    ratio_out, ratio_head, top = _at_events(measured, sink, value, gram, projection, valid, energy)
    stable_rank = torch.where(defined, energy / top.clamp_min(1e-300), torch.nan)
    rank1_energy = torch.where(defined, top / energy.clamp_min(1e-300), torch.nan)
    klass = sink_class(ratio_out, stable_rank, thresholds)
    extra = {} if grid is None else {"grid_routed": grid_routed, "grid_class": klass}
    if grid is not None:  # the event-only quantities stay NaN (class: other) off the events
        ratio_out, ratio_head, stable_rank, rank1_energy = (
            torch.where(event, x, torch.nan) for x in (ratio_out, ratio_head, stable_rank, rank1_energy)
        )
        klass = torch.where(event, klass, SinkClass.OTHER)

    return {
        "sink": sink,
        "max_inflow": inflow.gather(-1, sink[..., None]).squeeze(-1).double(),
        "cls_inflow": inflow[..., : layout[0]].double().sum(-1),  # layout: (CLS tokens, prefix tokens)
        "routed_frac": routed_frac,
        "event": event,
        "ratio_out": ratio_out,
        "ratio_head": ratio_head,
        "stable_rank": stable_rank,
        "rank1_energy": rank1_energy,
        "common_mode": common_mode,
        "class": klass,
        "token_type": token_type(sink, layout),
        "inflow": inflow,
    } | extra


def _grid_routed(
    to_sink: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor | None, prefix: int, thresholds: Thresholds, grid
) -> torch.Tensor:
    """(batch, heads, routed thresholds, query sets): the routed fraction under each of the grid's choices."""
    rows = [[replace(thresholds, routed=r, queries=q) for q in grid.queries] for r in grid.routed]
    return torch.stack(
        [torch.stack([_routed_fraction(to_sink, tokens, valid, prefix, t) for t in row], -1) for row in rows], -2
    )


def _routed_fraction(
    to_sink: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor | None, prefix: int, thresholds: Thresholds
) -> torch.Tensor:
    """Per (image, head): the share of the counted queries (`thresholds.queries`: all valid ones, or the valid patch
    queries after the `prefix` tokens) whose attention to the sink reaches `thresholds.routed`; `to_sink` is (batch,
    heads, queries) and `tokens` each image's valid token count."""
    routed = to_sink >= thresholds.routed
    counted, queries = tokens, valid
    if thresholds.queries == "patches":
        patches = torch.arange(to_sink.shape[-1], device=to_sink.device) >= prefix
        queries = patches.expand(to_sink.shape[0], -1) if valid is None else valid & patches
        counted = queries.double().sum(-1)
    if queries is not None:
        routed = routed & queries[:, None, :]
    return routed.double().sum(dim=-1) / counted[:, None]


def sink_class(ratio_out: torch.Tensor, stable_rank: torch.Tensor, thresholds: Thresholds) -> torch.Tensor:
    """The SinkClass of each record: NOP when the sink's value is negligible (the rule that wins), broadcast when it
    is large and the head's update near rank one, other else (NaN quantities, off the events, fail both)."""
    klass = torch.full_like(ratio_out, SinkClass.OTHER, dtype=torch.long)
    broadcast = (ratio_out >= thresholds.broadcast_ratio) & (stable_rank <= thresholds.broadcast_rank)
    klass = torch.where(broadcast, SinkClass.BROADCAST, klass)
    return torch.where(ratio_out <= thresholds.nop_ratio, SinkClass.NOP, klass)


def token_type(sink: torch.Tensor, layout: tuple[int, int]) -> torch.Tensor:
    """The TokenType of each sink index, for a sequence of `layout` = (CLS tokens, prefix tokens) then patches."""
    num_cls, num_prefix = layout
    return torch.where(
        sink < num_cls, TokenType.CLS, torch.where(sink < num_prefix, TokenType.REGISTER, TokenType.PATCH)
    )


def _at_events(event, sink, value, gram, projection: HeadProjection, valid, energy) -> tuple[torch.Tensor, ...]:
    """ratio_out, ratio_head and the top eigenvalue of U U^T, computed for the sink events alone (all of the layer's
    in one batch), NaN elsewhere."""
    images, event_heads = event.nonzero().unbind(1)

    def placed(x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(energy, torch.nan).index_put((images, event_heads), x.double())

    values = value[images, event_heads].float()  # E, N, d_h
    keep = None if valid is None else valid[images]
    factor = projection.factor[event_heads]  # the F of each event's head
    u_norm = (values @ factor.float()).norm(dim=-1)  # ||u_j|| = ||F^T v_j||
    ratio_out = placed(_sink_ratio(u_norm.double(), sink[event], keep))
    ratio_head = placed(_sink_ratio(values.norm(dim=-1).double(), sink[event], keep))
    # The non-zero eigenvalues of U U^T (N x N) are those of F^T G F (d_h x d_h), solved in float64.
    top = placed(torch.linalg.eigvalsh(factor.transpose(-1, -2) @ gram[event].double() @ factor)[..., -1])
    return ratio_out, ratio_head, top.clamp_min(0)


def _attention_statistics(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    projection: HeadProjection,
    output: torch.Tensor,
    bias: torch.Tensor | None,
    valid: torch.Tensor | None,
    chunks: int,
) -> tuple[torch.Tensor, ...]:
    """What `layer_metrics` needs of the attention maps, per (image, head): the inflow of each key, each query's
    attention to the dominant key, the Gram matrix G = o^T o, ||U||_F^2 and the mean of o (over valid queries)."""
    batch, heads, tokens, width = query.shape
    inflow, to_sink = (query.new_empty(batch, heads, tokens, dtype=torch.float32) for _ in range(2))
    gram = query.new_empty(batch, heads, width, width, dtype=torch.float32)  # G = o^T o
    energy = query.new_empty(batch, heads, dtype=torch.float64)  # ||U||_F^2 = tr(G P)
    mean = query.new_empty(batch, heads, width, dtype=torch.float32)  # mean_i o_i
    weight = None if valid is None else valid.float()  # 1 for a query that counts, 0 for padding
    # Each head's images in ceil(chunks / heads) groups: a group holds about 1/chunks of the layer's maps.
    step = -(-batch // -(-chunks // heads))
    for head in range(heads):
        q, k = (t[:, head].float() for t in (query, key))  # B, N, d_h
        for start in range(0, batch, step):
            part = slice(start, start + step)
            attention = (q[part] * scaling) @ k[part].transpose(-1, -2)  # B, N(queries), N(keys)
            if bias is not None:
                _apply_bias(attention, bias, part, head)
            torch.softmax(attention, dim=-1, out=attention)  # in place: no second N x N tensor
            if weight is None:
                inflow[part, head] = attention.mean(dim=1)
            else:
                attention.nan_to_num_(0.0)  # a padding query that may attend nowhere: 0 * NaN would spread
                counts = weight[part].sum(-1, keepdim=True)
                inflow[part, head] = (weight[part, None] @ attention).squeeze(1) / counts
            index = inflow[part, head].argmax(dim=-1)[:, None, None].expand(-1, tokens, 1)
            to_sink[part, head] = attention.gather(-1, index).squeeze(-1)
            del attention
        o = output[:, :, head].float()  # o = A v
        if weight is not None:
            o = o * weight[..., None]
        gram[:, head] = o.transpose(-1, -2) @ o
        energy[:, head] = (gram[:, head].double() * projection.p[head]).sum((-2, -1))  # float64: it has cancellations
        mean[:, head] = o.mean(dim=1) if weight is None else o.sum(dim=1) / weight.sum(-1, keepdim=True)
    return inflow, to_sink, gram, energy, mean


def _apply_bias(attention: torch.Tensor, bias: torch.Tensor, part: slice, head: int) -> None:
    """Add the kernel's logit bias, or mask out what a boolean mask forbids, in place; `bias` broadcasts over the
    batch and heads as the kernel's does."""
    rows = bias[part if bias.shape[0] > 1 else slice(None), head if bias.shape[1] > 1 else 0]
    if rows.dtype == torch.bool:
        attention.masked_fill_(~rows, float("-inf"))
    else:
        attention.add_(rows.float())


def _sink_ratio(norms: torch.Tensor, sink: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """||x_s|| / mean_{j != s} ||x_j|| for norms (..., tokens) and sinks (...), over the valid tokens if given."""
    at_sink = norms.gather(-1, sink[..., None]).squeeze(-1)
    if valid is None:
        others = (norms.sum(-1) - at_sink) / (norms.shape[-1] - 1)
    else:
        others = ((norms * valid).sum(-1) - at_sink) / (valid.double().sum(-1) - 1)
    # A zero sink value is a NOP even when every value is zero (a pruned head): 0, not 0/0.
    return torch.where(at_sink == 0, 0.0, at_sink / others)


def gate_metrics(
    gate: torch.Tensor, num_heads: int, closed: float, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (image, head) mean gate and share of queries whose gate for the head is below `closed` (valid ones only,
    if `valid` (batch, tokens) is given).

    `gate` is (batch, tokens, heads) for a headwise gate or (batch, tokens, channels) for an elementwise one,
    whose per-query value for a head is the mean over the head's channels.
    """
    per_head = gate.double().reshape(*gate.shape[:2], num_heads, -1).mean(-1)  # B, N, H
    if valid is None:
        return per_head.mean(1), (per_head < closed).double().mean(1)
    weight = valid.double()[..., None]
    counts = weight.sum(1)
    return (per_head * weight).sum(1) / counts, ((per_head < closed).double() * weight).sum(1) / counts


def token_norm_metrics(
    hidden_states: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the largest token norm and its ratio to the median token norm (the usual median), over the valid
    tokens if `valid` (batch, tokens) is given."""
    norms = hidden_states.double().norm(dim=-1)
    if valid is None:
        largest = norms.max(dim=-1).values
        return largest, largest / torch.quantile(norms, 0.5, dim=-1)
    kept = [row[mask] for row, mask in zip(norms, valid, strict=True)]
    largest = torch.stack([row.max() for row in kept])
    return largest, largest / torch.stack([torch.quantile(row, 0.5) for row in kept])

"""Plant known sinks in a model's first layer: the ground truth the diagnostics tests check against."""

import torch


def blocks(model):
    base = model.base_model
    return base.layers if hasattr(base, "layers") else base.encoder.layer


def layer_input(model, x, layer=0):
    """The normed tokens the attention of `layer` reads, captured by a hook of the test's own."""
    seen = {}

    def keep(module, args, output):
        seen["x"] = args[0]

    handle = blocks(model)[layer].attention.register_forward_hook(keep)
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["x"]


def plant(model, x, head, target, kind):
    """Make `head` of layer 0 send every query to token `target`, whose value is zero (NOP) or large (broadcast)."""
    attention = blocks(model)[0].attention
    tokens = layer_input(model, x)
    x_target = tokens[0, target]
    torch.testing.assert_close(tokens[:, target], x_target.expand_as(tokens[:, target]))  # image-independent
    dh = attention.q_proj.out_features // model.config.num_attention_heads
    rows = slice(head * dh, (head + 1) * dh)
    unit = x_target / x_target.norm()
    with torch.no_grad():
        attention.q_proj.weight[rows] = 0
        attention.q_proj.bias[rows] = 1
        # score_j = scaling * dh * strength * <unit, x_j>: the target's is ||x_target||, far above the others'.
        attention.k_proj.weight[rows] = 40.0 * unit.expand(dh, -1) / dh**0.5
        attention.k_proj.bias[rows] = 0
        weight = attention.v_proj.weight[rows]
        if kind == "nop":
            attention.v_proj.bias[rows] = -weight @ x_target
        else:
            attention.v_proj.bias[rows] = 50.0 * torch.randn(dh)


def make_uniform(model, head):
    attention = blocks(model)[0].attention
    dh = attention.q_proj.out_features // model.config.num_attention_heads
    with torch.no_grad():
        attention.q_proj.weight[head * dh : (head + 1) * dh] = 0
        attention.q_proj.bias[head * dh : (head + 1) * dh] = 0

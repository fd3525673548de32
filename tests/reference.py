"""An independent SinkViT forward written from the equations (docs/science.md sections 1 and 4) with plain torch ops:
explicit per-head softmax attention, no attention registry, no modules. Tests compare the model against it."""

import math

import torch
import torch.nn.functional as F


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def reference_tokens(model, pixel_values: torch.Tensor, zero_values: dict | None = None) -> dict:
    """Final normed tokens, the residual stream before that norm, per-layer attention maps and gates, computed from
    `model`'s parameters alone. `zero_values={layer: tokens}` zeroes head 0's value of token tokens[i] (or of the
    tokens in row tokens[i]) of image i in that layer (the causal check of docs/science.md section 6)."""
    config = model.config
    p = {name: t.detach().double() for name, t in model.base_model.named_parameters()}
    x = pixel_values.double()
    batch, _, height, width = x.shape
    ph, pw = _pair(config.patch_size)
    gh, gw = _pair(config.image_size)[0] // ph, _pair(config.image_size)[1] // pw
    nh, nw = height // ph, width // pw
    d, heads = config.hidden_size, config.num_attention_heads
    dh = d // heads

    # Patch embedding as an explicit matmul over flattened patches.
    patches = x.unfold(2, ph, ph).unfold(3, pw, pw)  # b, c, nh, nw, ph, pw
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(batch, nh * nw, -1)
    weight = p["embeddings.patch_embeddings.projection.weight"].reshape(d, -1)
    tokens = patches @ weight.T + p["embeddings.patch_embeddings.projection.bias"]

    pos = p["embeddings.position_embeddings"]
    patch_pos = pos[:, 1:]
    if (nh, nw) != (gh, gw):
        grid = patch_pos.reshape(1, gh, gw, d).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, size=(nh, nw), mode="bicubic", align_corners=False, antialias=config.interpolate_antialias
        )
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, d)
    cls = p["embeddings.cls_token"] + pos[:, :1]
    parts = [cls.expand(batch, -1, -1)]
    if config.num_register_tokens:
        parts.append(p["embeddings.register_tokens"].expand(batch, -1, -1))
    h = torch.cat(parts + [tokens + patch_pos], dim=1)

    def linear(t, name, bias=True):
        out = t @ p[name + ".weight"].T
        return out + p[name + ".bias"] if bias and name + ".bias" in p else out

    def norm(t, name):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + config.layer_norm_eps) * p[name + ".weight"] + p[name + ".bias"]

    def scale(t, name):
        return t * p[name + ".lambda1"] if config.layerscale_init is not None else t

    attentions, gates = [], []
    for i in range(config.num_hidden_layers):
        pre = f"layers.{i}."
        xn = norm(h, pre + "norm1")
        q, k, v = (linear(xn, pre + f"attention.{n}_proj") for n in "qkv")
        if zero_values and i in zero_values:
            v = v.clone()
            chosen = zero_values[i]
            v[torch.arange(batch).view(-1, *([1] * (chosen.ndim - 1))), chosen, :dh] = 0
        head_outputs, maps = [], []
        for j in range(heads):
            sl = slice(j * dh, (j + 1) * dh)
            a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh), dim=-1)
            maps.append(a)
            head_outputs.append(a @ v[..., sl])
        o = torch.cat(head_outputs, dim=-1)
        attentions.append(torch.stack(maps, dim=1))
        if config.attention_gate != "none":
            g = torch.sigmoid(linear(xn, pre + "attention.gate_proj"))
            gates.append(g)
            o = o * (g.repeat_interleave(dh, dim=-1) if config.attention_gate == "headwise" else g)
        update = linear(o, pre + "attention.o_proj")
        if config.global_pathway_dim:
            gp = pre + "global_pathway."
            pi = torch.softmax(linear(xn, gp + "score_proj", bias=False), dim=1)
            state = (pi * linear(xn, gp + "value_proj", bias=False)).sum(dim=1, keepdim=True)
            update = update + torch.sigmoid(linear(xn, gp + "gate_proj")) * linear(state, gp + "out_proj", bias=False)
        h = h + scale(update, pre + "layer_scale1")
        if config.intermediate_size:
            mlp = linear(F.gelu(linear(norm(h, pre + "norm2"), pre + "mlp.fc1")), pre + "mlp.fc2")
            h = h + scale(mlp, pre + "layer_scale2")
    final = norm(h, "layernorm") if "layernorm.weight" in p else h  # the task models read the residual stream
    return {"last_hidden_state": final, "residual": h, "attentions": attentions, "gates": gates}

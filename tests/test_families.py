"""The diagnostics on every supported family: exact against a brute-force computation from the family's eager
attention weights, the same under sdpa and eager, the model's outputs untouched, planted sinks found (also under RoPE
and a relative-position bias), SigLIP2's padding never counted."""

import pytest
import torch
import transformers as tf
from conftest import assert_nested_close
from families import CASES, SIZES, blocks, build, gamma, inputs, tower

from sink_models.diagnostics import SinkReport, Thresholds, diagnose
from sink_models.diagnostics.capture import _ACTIVE
from sink_models.diagnostics.report import EVENT_FIELDS, median

EVERYTHING = Thresholds(event=0.0)  # every (image, layer, head) becomes an event record


def forward_inputs(name: str, x: dict) -> dict:
    """What the test itself passes to the forward: a masked autoencoder keeps every patch, in order."""
    if name != "vit_mae":
        return x
    return {**x, "noise": torch.arange(16, dtype=torch.float32).expand(len(x["pixel_values"]), -1)}


def eager_pass(model, name: str, x: dict):
    """Eager attention weights, the v_proj outputs and each block's output tokens, by the test's own hooks."""
    model.set_attn_implementation("eager")
    values, outputs, hooks = {}, {}, []
    for index, block in enumerate(blocks(model, name)):
        attention = getattr(block, CASES[name].attention)
        hooks.append(attention.v_proj.register_forward_hook(lambda m, a, o, i=index: values.__setitem__(i, o)))
        hooks.append(block.register_forward_hook(lambda m, a, o, i=index: outputs.__setitem__(i, o)))
    ratio = getattr(model.config, "mask_ratio", None)
    if ratio is not None:
        model.config.mask_ratio = 0.0
    try:
        with torch.no_grad():
            attentions = tower(model, name)(**forward_inputs(name, x), output_attentions=True).attentions
    finally:
        if ratio is not None:
            model.config.mask_ratio = ratio
        for hook in hooks:
            hook.remove()
    outputs = {i: o[0] if isinstance(o, tuple) else o for i, o in outputs.items()}
    return attentions, values, outputs


def brute_force(model, name: str, x: dict) -> dict:
    """Every (image, layer, head) quantity the slow way, over each image's valid (unpadded) tokens."""
    case = CASES[name]
    attentions, values, _ = eager_pass(model, name, x)
    heads = SIZES["num_attention_heads"]
    valid = x.get("pixel_attention_mask", torch.ones(len(x["pixel_values"]), 16)).sum(-1).long()
    rows = {}
    for layer, block in enumerate(blocks(model, name)):
        scale = gamma(block, name)
        w_out = getattr(getattr(block, case.attention), case.output).weight.double()
        dh = w_out.shape[1] // heads
        for image in range(len(valid)):
            n = case.cls + case.registers + int(valid[image])
            for head in range(heads):
                a = attentions[layer][image, head, :n, :n].double()
                v = values[layer][image, :n, head * dh : (head + 1) * dh].double()
                u = v @ w_out[:, head * dh : (head + 1) * dh].T  # N x C
                if scale is not None:
                    u = u * scale.double()
                update = a @ u
                sigma = torch.linalg.svdvals(update)
                inflow = a.mean(0)
                s = int(inflow.argmax())
                others = [j for j in range(n) if j != s]
                rows[image, layer, head] = {
                    "sink": s,
                    "max_inflow": float(inflow[s]),
                    "routed_frac": float((a[:, s] >= 0.5).double().mean()),
                    "ratio_out": float(u[s].norm() / u[others].norm(dim=1).mean()),
                    "ratio_head": float(v[s].norm() / v[others].norm(dim=1).mean()),
                    "stable_rank": float(sigma.square().sum() / sigma[0] ** 2),
                    "rank1_energy": float(sigma[0] ** 2 / sigma.square().sum()),
                    "common_mode": float(update.mean(0).square().mean() / update.square().mean()),
                    "cls_inflow": float(inflow[: case.cls].sum()) if case.cls else None,
                    "token_type": "cls" if s < case.cls else "register" if s < case.cls + case.registers else "patch",
                }
    return rows


@pytest.mark.parametrize("name", CASES)
def test_every_quantity_equals_the_eager_brute_force(name):
    model = build(name, "eager")
    x = inputs(name)
    report = diagnose(model, [x], thresholds=EVERYTHING)
    expected = brute_force(model, name, x)
    assert len(report.events) == len(expected) == 3 * SIZES["num_hidden_layers"] * SIZES["num_attention_heads"]
    for event in report.events:
        want = expected[event["image"], event["layer"], event["head"]]
        assert (event["sink"], event["token_type"]) == (want["sink"], want["token_type"])
        for field in EVENT_FIELDS:
            assert event[field] == pytest.approx(want[field], rel=1e-4, abs=1e-6), field
    for row in report.heads:
        per_image = [expected[i, row["layer"], row["head"]] for i in range(3)]
        assert row["max_inflow"] == pytest.approx(sum(r["max_inflow"] for r in per_image) / 3, rel=1e-5)
        assert row["common_mode"] == pytest.approx(sum(r["common_mode"] for r in per_image) / 3, rel=1e-4)
        assert row["ratio_out"] == pytest.approx(median([r["ratio_out"] for r in per_image]), rel=1e-4)
        if CASES[name].cls:
            assert row["cls_inflow"] == pytest.approx(sum(r["cls_inflow"] for r in per_image) / 3, rel=1e-5)
        else:
            assert row["cls_inflow"] is None and row["cls_sink_rate"] is None and row["cls"] == 0
    layout = {key: report.model[key] for key in ("num_cls_tokens", "num_register_tokens")}
    assert layout == {"num_cls_tokens": CASES[name].cls, "num_register_tokens": CASES[name].registers}


@pytest.mark.parametrize("name", CASES)
def test_token_norms_are_those_of_the_valid_block_outputs(name):
    model = build(name, "eager")
    x = inputs(name)
    report = diagnose(model, [x])
    _, _, outputs = eager_pass(model, name, x)
    prefix = CASES[name].cls + CASES[name].registers
    valid = x.get("pixel_attention_mask", torch.ones(3, 16)).sum(-1).long() + prefix
    for layer, tokens in outputs.items():
        norms = [tokens[i, : valid[i]].double().norm(dim=-1) for i in range(3)]
        assert report.layers[layer]["token_norm_max"] == pytest.approx(max(float(n.max()) for n in norms))
        ratio = sum(float(n.max()) / median(n.tolist()) for n in norms) / 3
        assert report.layers[layer]["token_norm_max_over_median"] == pytest.approx(ratio)


@pytest.mark.parametrize("name", CASES)
def test_sdpa_gives_the_eager_report(name):
    model = build(name, "sdpa")
    x = inputs(name)
    sdpa = diagnose(model, [x], thresholds=EVERYTHING)
    model.set_attn_implementation("eager")
    eager = diagnose(model, [x], thresholds=EVERYTHING)
    assert (sdpa.model["attn_implementation"], eager.model["attn_implementation"]) == ("sdpa", "eager")
    for field in ("summary", "heads", "layers", "events", "attention"):
        assert_nested_close(getattr(sdpa, field), getattr(eager, field), rel=1e-4, abs=1e-6, where=field)


@pytest.mark.parametrize("name", CASES)
def test_outputs_are_those_of_an_uninstrumented_forward(name):
    model = build(name, "sdpa")
    x = inputs(name)
    seen = []
    diagnose(model, [x], on_outputs=lambda batch, outputs, count: seen.append(outputs))
    ratio = getattr(model.config, "mask_ratio", None)
    if ratio is not None:
        model.config.mask_ratio = 0.0
    with torch.no_grad():
        plain = tower(model, name)(**forward_inputs(name, x))
    if ratio is not None:
        model.config.mask_ratio = ratio
    keys = [key for key, value in plain.items() if isinstance(value, torch.Tensor)]
    assert keys and keys == [key for key, value in seen[0].items() if isinstance(value, torch.Tensor)]
    for key in keys:
        assert torch.equal(plain[key], seen[0][key]), key  # bit-identical
    assert model.config._attn_implementation == "sdpa" and not _ACTIVE
    assert not any(module._forward_hooks for module in model.modules())


def test_the_backend_is_restored_when_the_forward_fails():
    model = build("dinov3", "sdpa")

    def fail(batch, outputs, count):
        raise RuntimeError("downstream failure")

    with pytest.raises(RuntimeError, match="downstream failure"):
        diagnose(model, [inputs("dinov3")], on_outputs=fail)
    assert model.config._attn_implementation == "sdpa" and not _ACTIVE
    assert not any(module._forward_hooks for module in model.modules())
    with torch.no_grad():  # and it still runs
        model(**inputs("dinov3"))


def test_a_masked_autoencoder_keeps_its_mask_ratio():
    model = build("vit_mae")
    report = diagnose(model, [inputs("vit_mae")])
    assert model.config.mask_ratio == 0.75 and report.attention["grid"] == [4, 4]
    assert len(report.attention["inflow"][0][0]) == 17  # every patch was seen


def layer_input(model, name: str, x: dict) -> torch.Tensor:
    seen = {}
    attention = getattr(blocks(model, name)[0], CASES[name].attention)
    handle = attention.register_forward_hook(lambda m, a, o: seen.__setitem__("x", a[0]), with_kwargs=False)
    with torch.no_grad():
        tower(model, name)(**x)
    handle.remove()
    return seen["x"]


def still_dimensions(model, x: dict, dh: int) -> torch.Tensor:
    """The head dimensions that DINOv3's RoPE barely rotates at any patch (cos > 0.99): a query there finds the same
    key at every position."""
    rope = next(m for m in model.modules() if type(m).__name__.endswith("RopePositionEmbedding"))
    cos, _ = rope(x["pixel_values"])
    return (cos.reshape(-1, dh).min(dim=0).values > 0.99).nonzero().flatten()


def plant(model, name: str, x: dict, head: int, target: int, kind: str) -> None:
    """Make `head` of layer 0 send every query to token `target` (a CLS or register token, the same in every image),
    whose value is zero (NOP) or large (broadcast)."""
    attention = getattr(blocks(model, name)[0], CASES[name].attention)
    tokens = layer_input(model, name, x)
    x_target = tokens[0, target]
    torch.testing.assert_close(tokens[:, target], x_target.expand_as(tokens[:, target]))
    dh = SIZES["hidden_size"] // SIZES["num_attention_heads"]
    rows = slice(head * dh, (head + 1) * dh)
    dims = still_dimensions(model, x, dh) if name == "dinov3" else torch.arange(dh)
    assert len(dims) > 0
    query = torch.zeros(dh)
    query[dims] = dh / len(dims)
    with torch.no_grad():
        attention.q_proj.weight[rows] = 0
        attention.q_proj.bias[rows] = query
        # score_j ~ 40 <x_target / ||x_target||, x_j>: the target's is 40 ||x_target||, far above the others'.
        attention.k_proj.weight[rows] = 40.0 * (x_target / x_target.norm()).expand(dh, -1) / dh**0.5
        if attention.k_proj.bias is not None:
            attention.k_proj.bias[rows] = 0
        if kind == "nop":
            attention.v_proj.bias[rows] = -attention.v_proj.weight[rows] @ x_target
        else:
            attention.v_proj.bias[rows] = 50.0 * torch.randn(dh)


@pytest.mark.parametrize("name", ["dinov3", "beit", "radio"])  # RoPE; a relative-position bias; two CLS tokens
@pytest.mark.parametrize("kind", ["nop", "broadcast"])
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_planted_sinks_are_found_and_classified(name, kind, implementation):
    model = build(name, implementation)
    x = inputs(name, batch=4)
    case = CASES[name]
    target = case.cls + case.registers - 1  # the last prefix token: a register, or the second CLS
    plant(model, name, x, head=1, target=target, kind=kind)
    plant(model, name, x, head=3, target=0, kind="nop" if kind == "broadcast" else "broadcast")
    report = diagnose(model, [x])
    planted = next(row for row in report.heads if (row["layer"], row["head"]) == (0, 1))
    token_type = "register" if case.registers else "cls"
    assert planted["events"] == 4 and planted[kind] == 4 and planted[token_type] == 4
    assert planted["max_inflow"] > 0.99
    if kind == "nop":
        assert planted["ratio_out"] < 1e-3
    else:
        assert planted["ratio_out"] >= 0.5 and planted["stable_rank"] < 1.01
    other = next(row for row in report.heads if (row["layer"], row["head"]) == (0, 3))
    assert other["events"] == 4 and other["cls"] == 4
    assert {e["sink"] for e in report.events if (e["layer"], e["head"]) == (0, 1)} == {target}


def test_padded_siglip2_patches_are_never_tokens():
    model = build("siglip2")
    x = inputs("siglip2")
    padded = diagnose(model, [x], thresholds=EVERYTHING, attention_image=2)
    alone = []
    for image, patches in enumerate([16, 16, 12]):
        single = {
            "pixel_values": x["pixel_values"][image : image + 1, :patches],
            "pixel_attention_mask": torch.ones(1, patches, dtype=torch.long),
            "spatial_shapes": x["spatial_shapes"][image : image + 1],
        }
        alone.append(diagnose(model, [single], thresholds=EVERYTHING))
    for event in padded.events:
        want = next(
            e for e in alone[event["image"]].events if (e["layer"], e["head"]) == (event["layer"], event["head"])
        )
        assert_nested_close({**want, "image": event["image"]}, event, rel=1e-4, abs=1e-6)
    for row in padded.heads:
        per_image = [next(r for r in a.heads if (r["layer"], r["head"]) == (row["layer"], row["head"])) for a in alone]
        assert row["max_inflow"] == pytest.approx(sum(r["max_inflow"] for r in per_image) / 3, rel=1e-5)
    assert padded.attention["grid"] == [3, 4] and len(padded.attention["inflow"][0][0]) == 12
    assert [row["token_norm_max"] for row in padded.layers] == pytest.approx(
        [max(a.layers[i]["token_norm_max"] for a in alone) for i in range(2)]
    )


def test_a_dual_encoder_is_diagnosed_through_its_vision_model():
    dual = build("clip_dual")
    vision = tf.CLIPVisionModel(dual.config.vision_config).eval()
    vision.load_state_dict(dual.vision_model.state_dict())
    x = inputs("clip_dual")
    a, b = diagnose(dual, [x]), diagnose(vision, [x])
    assert a.model["family"] == b.model["family"] == "clip_vision_model"
    for field in ("summary", "heads", "layers", "events"):
        assert_nested_close(getattr(a, field), getattr(b, field), rel=1e-6, where=field)


@pytest.mark.parametrize(
    ("build_model", "message"),
    [
        (
            lambda: tf.Data2VecVisionModel(tf.Data2VecVisionConfig(**SIZES, image_size=32, patch_size=8)),
            "Data2VecVisionModel \\(model_type 'data2vec-vision'\\) is not supported by the diagnostics, which need",
        ),
        (
            lambda: tf.BertModel(tf.BertConfig(**SIZES)),
            "BertModel \\(model_type 'bert'\\) is not supported.*supported families \\(model_type\\): sink_vit, vit,",
        ),
        (lambda: torch.nn.Linear(2, 2), "model: Linear is not supported"),
    ],
)
def test_unsupported_models_are_refused_with_the_supported_families(build_model, message):
    with pytest.raises(ValueError, match=message):
        diagnose(build_model(), [torch.randn(1, 3, 32, 32)])


def test_siglip2_needs_its_processor_output():
    model = build("siglip2")
    with pytest.raises(ValueError, match="a dict batch needs 'pixel_attention_mask' and 'spatial_shapes'; got keys"):
        diagnose(model, [{"pixel_values": inputs("siglip2")["pixel_values"]}])
    with pytest.raises(TypeError, match="siglip2_vision_model needs dicts with pixel_values, pixel_attention_mask"):
        diagnose(model, [inputs("siglip2")["pixel_values"]])


def test_reports_of_new_families_round_trip_through_json(tmp_path):
    report = diagnose(build("siglip"), [inputs("siglip")])
    assert SinkReport.from_json(report.to_json(tmp_path / "r.json")) == report
    assert report.summary["cls_sink_rate"] is None and report.summary["sink_share"]["cls"] == 0.0


def test_flex_attention_gives_the_eager_report():
    model = build("dinov3", "flex_attention")  # compiled on first use: the one slow test here (~10 s)
    x = inputs("dinov3")
    flex = diagnose(model, [x], thresholds=EVERYTHING)
    model.set_attn_implementation("eager")
    eager = diagnose(model, [x], thresholds=EVERYTHING)
    assert flex.model["attn_implementation"] == "flex_attention"
    assert_nested_close(flex.events, eager.events, rel=1e-4, abs=1e-6, where="events")

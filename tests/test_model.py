"""The model against docs/method.md section 1, checked with an independent, literal re-implementation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import untrimmed
from torch import nn

from stadapter_deploy import build_model
from stadapter_deploy.model import STAdapter, is_trainable_name
from stadapter_deploy.model.build import resolve_config

# ----------------------------------------------------------------------------- a plain reference
# Written straight from docs/method.md section 1 (and the reference code's layout): sequence-first tokens,
# nn.MultiheadAttention-style math by hand, and the adapter as permute -> nn.Conv3d -> permute.


def ref_layer_norm(x, ln):
    return F.layer_norm(x.float(), ln.normalized_shape, ln.weight, ln.bias, ln.eps).to(x.dtype)


def ref_adapter(x, adapter, t):
    # x: [L, B*T, D] (sequence first, as in OpenAI CLIP)
    length, bt, d = x.shape
    side = int(math.isqrt(length - 1))
    patches = x[1:].permute(1, 0, 2)  # [B*T, L-1, D]
    h = adapter.fc1(patches)  # [B*T, L-1, Ca]
    ca = h.shape[-1]
    h = h.view(bt // t, t, side, side, ca).permute(0, 4, 1, 2, 3).contiguous()  # [B, Ca, T, H', W']
    h = adapter.conv(h)  # nn.Conv3d, kernel (3,1,1), padding (1,0,0), depthwise
    h = h.permute(0, 2, 3, 4, 1).reshape(bt, length - 1, ca)  # [B*T, L-1, Ca]
    out = x.clone()
    out[1:] = out[1:] + adapter.fc2(h).permute(1, 0, 2)
    return out


def ref_attention(x, attn, heads):
    length, n, d = x.shape
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda y: y.reshape(length, n * heads, d // heads).transpose(0, 1)  # [N*h, L, d]
    q, k, v = split(q), split(k), split(v)
    w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d // heads), dim=-1)
    y = (w @ v).transpose(0, 1).reshape(length, n, d)
    return attn.out_proj(y)


def ref_forward(model, clip):
    cfg = model.cfg
    b, _, t, h, w = clip.shape
    frames = clip.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
    x = model.conv1(frames).reshape(b * t, cfg.width, -1).permute(0, 2, 1)  # [B*T, P, D]
    cls = model.class_embedding + torch.zeros(b * t, 1, cfg.width)
    x = torch.cat([cls, x], dim=1) + model.positional_embedding
    x = ref_layer_norm(x, model.ln_pre).permute(1, 0, 2)  # [L, B*T, D]
    for block in model.transformer.resblocks:
        if block.adapter_pre_attn is not None:
            x = ref_adapter(x, block.adapter_pre_attn, t)
        x = x + ref_attention(ref_layer_norm(x, block.ln_1), block.attn, cfg.heads)
        if block.adapter_pre_mlp is not None:
            x = ref_adapter(x, block.adapter_pre_mlp, t)
        hidden = block.mlp.c_fc(ref_layer_norm(x, block.ln_2))
        x = x + block.mlp.c_proj(hidden * torch.sigmoid(1.702 * hidden))
    cls_tokens = x[0].reshape(b, t, cfg.width).mean(dim=1)
    return model.fc(ref_layer_norm(cls_tokens, model.ln_post))


def randomize_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_trainable_name(name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("pre_attn,pre_mlp", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("frames", [8, 16])
def test_matches_plain_reference(pre_attn, pre_mlp, frames):
    torch.manual_seed(0)
    model = build_model("tiny", adapter_pre_attn=pre_attn, adapter_pre_mlp=pre_mlp, adapter_layers=2).eval()
    randomize_adapters(model)
    clip = torch.randn(2, 3, frames, 32, 32)
    with torch.no_grad():
        ours, ref = model(clip), ref_forward(model, clip)
    assert ours.shape == (2, model.cfg.num_classes)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # the adapters change the output: the comparison above is not between two identities
    with torch.no_grad():
        fresh = build_model("tiny", adapter_pre_attn=pre_attn, adapter_pre_mlp=pre_mlp, adapter_layers=2)
        fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "adapter" not in k}, strict=False)
        assert (fresh.eval()(clip) - ours).abs().max() > 1e-3


def test_fresh_model_is_plain_clip():
    """All-zero adapters: class-token mean over time -> ln_post -> fc, with no adapter at all."""
    torch.manual_seed(1)
    model = build_model("tiny").eval()
    plain = build_model("tiny", adapter_layers=0).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "adapter" not in k})
    clip = torch.randn(3, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(clip), plain(clip))
        torch.testing.assert_close(model(clip), ref_forward(plain, clip), atol=1e-6, rtol=1e-5)


def test_temporal_conv_equals_conv3d():
    torch.manual_seed(2)
    adapter = STAdapter(width=16, adapter_width=8)
    nn.init.normal_(adapter.conv.weight)
    nn.init.normal_(adapter.conv.bias)
    h = torch.randn(2, 8, 9, 8)  # [B, T, P, C]
    torch.testing.assert_close(adapter.temporal_conv(h), adapter.conv3d_forward(h), atol=1e-6, rtol=1e-6)
    # and literally: y[t] = w0*h[t-1] + w1*h[t] + w2*h[t+1] + b, zero-padded
    w = adapter.conv.weight.view(8, 3)
    t = 4
    expect = w[:, 0] * h[:, t - 1] + w[:, 1] * h[:, t] + w[:, 2] * h[:, t + 1] + adapter.conv.bias
    torch.testing.assert_close(adapter.temporal_conv(h)[:, t], expect, atol=1e-6, rtol=1e-6)
    edge = w[:, 1] * h[:, 0] + w[:, 2] * h[:, 1] + adapter.conv.bias
    torch.testing.assert_close(adapter.temporal_conv(h)[:, 0], edge, atol=1e-6, rtol=1e-6)


def test_conv3d_switch_gives_same_logits():
    model = randomize_adapters(build_model("tiny").eval(), seed=3)
    clip = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad(), model.temporal_conv("shift"):
        shifted = model(clip)
    with torch.no_grad(), model.temporal_conv("conv3d"):
        literal = model(clip)
    torch.testing.assert_close(shifted, literal, atol=1e-5, rtol=1e-5)


def test_trainable_parameter_counts():
    def trainable(m):
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    k400 = build_model("vit_b16_adapter12x384", num_classes=400)
    ssv2 = build_model("vit_b16_adapter24x384", num_classes=174)
    assert trainable(k400) == 7_417_744
    assert trainable(ssv2) == 14_354_094
    for model in (k400, ssv2):
        for name, p in model.named_parameters():
            assert p.requires_grad == (".adapter_pre_" in name or name.startswith("fc.")), name


def test_vit_l14_presets_place_adapters_in_all_24_blocks():
    for name, pre_attn in (("vit_l14_adapter24x384", False), ("vit_l14_adapter48x384", True)):
        cfg = resolve_config(name, None, None, {"num_classes": 10})  # build_model's config, without the model
        assert (cfg.width, cfg.layers, cfg.patch_size, cfg.adapter_layers) == (1024, 24, 14, 24)
        assert cfg.adapter_pre_attn == pre_attn and cfg.adapter_pre_mlp


def test_any_frame_count_and_dynamic_batch_under_tracing():
    model = randomize_adapters(build_model("tiny").eval())
    with torch.no_grad():
        for frames in (1, 8, 16, 32):
            assert model(torch.randn(1, 3, frames, 32, 32)).shape == (1, 6)
        traced = torch.jit.trace(model, torch.randn(2, 3, 8, 32, 32))
        for batch in (1, 3, 5):
            clip = torch.randn(batch, 3, 8, 32, 32)
            torch.testing.assert_close(traced(clip), model(clip), atol=1e-5, rtol=1e-5)


def test_input_is_not_modified():
    model = randomize_adapters(build_model("tiny").eval())
    clip = torch.randn(2, 3, 8, 32, 32)
    before = clip.clone()
    model(clip)
    assert torch.equal(clip, before)


@pytest.mark.parametrize("shape", [(3, 8, 32, 32), (2, 1, 8, 32, 32), (2, 3, 8, 64, 64), (2, 8, 3, 32, 32)])
def test_wrong_input_shape_names_the_expected_shape(shape):
    model = build_model("tiny")
    with pytest.raises(ValueError, match=r"\[B, 3, T, 32, 32\]"):
        model(torch.randn(*shape))


def test_bf16_autocast_on_cpu_is_finite_and_close():
    model = randomize_adapters(build_model("tiny").eval())
    clip = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        full = model(clip)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(clip)
    assert torch.isfinite(half).all()
    assert F.cosine_similarity(half.float(), full, dim=1).min() > 0.99


def test_bf16_backbone_weights_on_cpu():
    model = randomize_adapters(build_model("tiny").eval()).to(torch.bfloat16)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 8, 32, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_fp16_on_gpu_is_finite_and_close():
    model = randomize_adapters(build_model("tiny").eval()).cuda()
    clip = torch.randn(2, 3, 8, 32, 32, device="cuda")
    with torch.no_grad():
        full = model(clip)
        half = model.half()(clip.half())
    assert torch.isfinite(half).all()
    assert F.cosine_similarity(half.float(), full, dim=1).min() > 0.999


@pytest.mark.parametrize("trim", [True, False])
def test_gradients_reach_only_adapters_and_head(trim):
    model = randomize_adapters(build_model("tiny").train())
    model = model if trim else untrimmed(model)
    model(torch.randn(2, 3, 8, 32, 32)).sum().backward()
    last = f"transformer.resblocks.{model.cfg.layers - 1}.adapter_pre_mlp."
    for name, p in model.named_parameters():
        if not is_trainable_name(name):
            assert p.grad is None, name
        elif name.startswith(last):
            # A fact of the method: after the last attention, patch tokens never reach the class
            # token, so the last block's pre-MLP adapter cannot change the output. The trimmed
            # forward skips it (no gradient at all); the full one gives it a zero gradient.
            assert p.grad is None if trim else p.grad.abs().sum() == 0, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- trimming the last block


def logits(model, clip, trim):
    with torch.no_grad():
        return (model if trim else untrimmed(model))(clip)


@pytest.mark.parametrize("use_conv3d", [True, False])
@pytest.mark.parametrize("pre_attn,pre_mlp", [(True, True), (False, True), (True, False)])
def test_trimmed_last_block_equals_full_forward(pre_attn, pre_mlp, use_conv3d):
    torch.manual_seed(4)
    model = build_model("tiny", adapter_pre_attn=pre_attn, adapter_pre_mlp=pre_mlp).eval()
    randomize_adapters(model, seed=4)
    with model.temporal_conv("conv3d" if use_conv3d else "shift"):
        for clip in (torch.randn(3, 3, 8, 32, 32), torch.randn(1, 3, 5, 32, 32)):
            torch.testing.assert_close(logits(model, clip, True), logits(model, clip, False), atol=1e-6, rtol=1e-5)


def test_trimming_keeps_the_last_pre_attention_adapter():
    """The last block's pre-attention adapter changes the keys and values, so it must still run."""
    model = randomize_adapters(build_model("tiny").eval(), seed=5)
    clip = torch.randn(2, 3, 8, 32, 32)
    before = logits(model, clip, True)
    last = model.transformer.resblocks[-1]
    with torch.no_grad():
        last.adapter_pre_mlp.fc2.bias.add_(1.0)
    assert torch.equal(logits(model, clip, True), before)  # dead: skipped, unchanged
    with torch.no_grad():
        last.adapter_pre_attn.fc2.weight.mul_(2.0)
    changed = logits(model, clip, True)
    assert (changed - before).abs().max() > 1e-3
    torch.testing.assert_close(changed, logits(model, clip, False), atol=1e-6, rtol=1e-5)


def weight_matmuls(path):
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {t.name for t in graph.initializer}
    return sum(n.op_type == "MatMul" and n.input[1] in weights for n in graph.node)


def test_trimmed_model_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from stadapter_deploy.export.onnx_export import count_ops, export_onnx

    model = randomize_adapters(build_model("tiny").eval(), seed=6)
    full = export_onnx(untrimmed(model), tmp_path / "full.onnx", num_frames=8)
    trimmed = export_onnx(model, tmp_path / "trimmed.onnx", num_frames=8)
    # one adapter fewer in the graph (each shifted temporal conv pads once); every weight is still a
    # constant (quantizers and fusions need that): the adapter's 2 weight MatMuls go, q/kv split into 2
    assert count_ops(trimmed)["Pad"] == count_ops(full)["Pad"] - 1
    assert weight_matmuls(trimmed) == weight_matmuls(full) - 1
    session = ort.InferenceSession(str(trimmed), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        clip = torch.randn(batch, 3, 8, 32, 32)
        out, features = session.run(None, {"clips": clip.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), logits(model, clip, False), atol=1e-5, rtol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(features), model.features(clip), atol=1e-5, rtol=1e-4)

"""Heatmaps for the ST-Adapter ViT: where in each frame the evidence for a class lies.

The maps come from the patch tokens *entering* the last block, as its attention reads them (after its
pre-attention adapter, where it has one, and its ln_1). The head reads only each frame's class token, and
the last block's attention is the last place patch tokens reach it, so the patch tokens that block puts
out never reach the head (their gradient is zero). The head averages the frames, so every frame gets its
own map. Each token's score is the gradient of the class logit times the token, summed over channels,
positive part ("gradient x input"), upsampled bilinearly from the patch grid to the input size.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017) is the same product with each channel's gradient first averaged over a frame's
positions, the form made for CNN feature maps, where the gradient varies little across positions. Here
it does vary: the class token's attention weighs each patch on its own. On the trained synthetic model,
the map's mass inside the moving square is 4.2x the square's share of the frame with gradient x input
and 2.2x with Grad-CAM (1.3x with Grad-CAM on the tokens before ln_1); tests/test_explain.py measures
both. `method="grad_cam"` gives Grad-CAM, for comparisons.

Only the last block and the head run with autograd: the gradient needs nothing earlier, so a map costs
one forward pass plus a backward pass through one block's class-token path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .vit import STAdapterViT

METHODS = ("gradient_x_input", "grad_cam")


@dataclass
class Heatmaps:
    maps: torch.Tensor  # [V, T, S, S] float32 in [0, 1], one map per frame of each clip
    logits: torch.Tensor  # [V, C] the clips' logits (no gradient)
    target: int  # the class explained


def heatmaps(
    model: STAdapterViT, clips: torch.Tensor, target: int | None = None, method: str = "gradient_x_input"
) -> Heatmaps:
    """Heatmaps of class `target` (default: the top-1 of the views' softmax averaged, as classify ranks)
    for clips [V, 3, T, S, S], the views of one video. Each clip's maps are scaled by that clip's largest
    value, so its frames compare with each other; a clip without positive evidence gets zeros."""
    if method not in METHODS:
        raise ValueError(f"unknown heatmap method {method!r}; choose one of {', '.join(METHODS)}")
    model.check_input(clips)
    num_clips, _, num_frames, size, _ = clips.shape
    *blocks, last = model.transformer.resblocks
    with torch.no_grad():
        x = model.embed(clips.transpose(1, 2).flatten(0, 1))  # [V*T, L, D]
        for block in blocks:
            x = block(x, num_frames, model.use_conv3d)
        if last.adapter_pre_attn is not None:
            x = last.adapter_pre_attn(x, num_frames, model.use_conv3d)
        tokens = last.ln_1(x)  # [V*T, L, D] what the last block's attention reads
    tokens.requires_grad_()
    with torch.enable_grad():
        out = last.class_token_forward(x, tokens)  # [V*T, 1, D]
        logits = model.head(model.pool(out, num_frames)).float()  # [V, C]
        if target is None:
            target = int(logits.detach().softmax(-1).mean(0).argmax())
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < logits.shape[-1]:
            raise ValueError(f"target must be a class index in [0, {logits.shape[-1]}), got {target!r}")
        # the views are independent in the graph: the gradient of their sum is each view's own
        (grad,) = torch.autograd.grad(logits[:, target].sum(), tokens)
    patches, grad = tokens.detach()[:, 1:].float(), grad[:, 1:].float()  # [V*T, P, D]
    if method == "grad_cam":
        grad = grad.mean(dim=1, keepdim=True)  # [V*T, 1, D]: each channel's mean gradient over the frame
    cam = F.relu((patches * grad).sum(-1))  # [V*T, P]
    grid = model.cfg.grid
    cam = F.interpolate(cam.view(-1, 1, grid, grid), size=(size, size), mode="bilinear", align_corners=False)
    cam = cam.view(num_clips, num_frames, size, size)
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)  # [V, 1, 1, 1]
    return Heatmaps(maps=(cam / peak).clamp(0, 1), logits=logits.detach(), target=target)

"""CLIP vision transformer with ST-Adapters (Pan et al., NeurIPS 2022).

Parameter names follow OpenAI CLIP's `visual` module and the reference ST-Adapter code, so their
state dicts load without renaming. Tokens are kept batch-first: [B*T, L, D].
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

TEMPORAL_CONV_FORMS = ("conv3d", "shift")


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (as CLIP does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with CLIP's packed q/k/v projection, via scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape  # [N, L, D]
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [N, L, 3D]
        qkv = qkv.view(-1, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)  # [3, N, h, L, d]
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [N, h, L, d]
        y = y.transpose(1, 2).reshape(-1, length, width)  # [N, L, D]
        return self.out_proj(y)

    def class_token_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The output at the class token only: [N, L, D] -> [N, 1, D]. Keys and values still use every token."""
        length, width = x.shape[1], self.out_proj.in_features  # a Python int, so ONNX folds the weight slices
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(x[:, :1], w[:width], b[:width])  # [N, 1, D]
        kv = F.linear(x, w[width:], b[width:])  # [N, L, 2D]
        q = q.view(-1, 1, self.heads, width // self.heads).transpose(1, 2)  # [N, h, 1, d]
        kv = kv.view(-1, length, 2, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)  # [2, N, h, L, d]
        y = F.scaled_dot_product_attention(q, kv[0], kv[1])  # [N, h, 1, d]
        return self.out_proj(y.transpose(1, 2).reshape(-1, 1, width))  # [N, 1, D]


class STAdapter(nn.Module):
    """fc1 -> depthwise temporal conv (kernel (k,1,1)) -> fc2, added to the patch tokens.

    The conv keeps its nn.Conv3d parameters, so reference checkpoints load unchanged. It can run in
    two mathematically identical forms: `conv3d_forward` (permute, nn.Conv3d, permute back) and
    `temporal_conv` (k shifted multiply-adds on the token layout, no permutes). Eager PyTorch on CPU
    runs the Conv3d form faster (oneDNN's depthwise kernel; see docs/benchmarks.md); the exporter
    writes the shift form by default, which ran faster in ONNX Runtime (`--temporal-conv` picks either).
    """

    def __init__(self, width: int, adapter_width: int, kernel_t: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(width, adapter_width)
        self.conv = nn.Conv3d(
            adapter_width,
            adapter_width,
            kernel_size=(kernel_t, 1, 1),
            padding=(kernel_t // 2, 0, 0),
            groups=adapter_width,
        )
        self.fc2 = nn.Linear(adapter_width, width)
        # A fresh adapter is exactly the identity.
        for p in (self.conv.weight, self.conv.bias, self.fc1.bias, self.fc2.bias):
            nn.init.zeros_(p)

    def temporal_conv(self, h: torch.Tensor) -> torch.Tensor:
        """Depthwise conv over time. h: [B, T, P, C] -> [B, T, P, C]."""
        k = self.conv.kernel_size[0]
        taps = self.conv.weight.view(-1, k).t()  # [k, C]
        padded = F.pad(h, (0, 0, 0, 0, k // 2, k // 2))  # [B, T+k-1, P, C], zeros at both ends
        num_frames = h.shape[1]
        y = self.conv.bias + padded[:, 0:num_frames] * taps[0]
        for i in range(1, k):
            y = y + padded[:, i : i + num_frames] * taps[i]
        return y

    def conv3d_forward(self, h: torch.Tensor) -> torch.Tensor:
        """The same temporal conv through nn.Conv3d. h: [B, T, P, C] -> [B, T, P, C]."""
        _, t, p, c = h.shape  # the batch stays symbolic (-1) so exported graphs keep it dynamic
        side = math.isqrt(int(p))
        h = h.permute(0, 3, 1, 2).reshape(-1, c, t, side, side)  # [B, C, T, H', W']
        h = self.conv(h)
        return h.reshape(-1, c, t, p).permute(0, 2, 3, 1)  # [B, T, P, C]

    def forward(self, x: torch.Tensor, num_frames: int, use_conv3d: bool = False) -> torch.Tensor:
        # x: [B*T, L, D]; the class token (index 0) passes through unchanged
        cls_token, patches = x[:, :1], x[:, 1:]
        h = self.fc1(patches)  # [B*T, P, C]
        h = h.unflatten(0, (-1, num_frames))  # [B, T, P, C]
        h = self.conv3d_forward(h) if use_conv3d else self.temporal_conv(h)
        h = h.flatten(0, 1)  # [B*T, P, C]
        return torch.cat([cls_token, patches + self.fc2(h)], dim=1)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, pre_attn_adapter: bool, pre_mlp_adapter: bool):
        super().__init__()
        d = cfg.width
        self.ln_1 = LayerNorm(d)
        self.attn = Attention(d, cfg.heads)
        self.ln_2 = LayerNorm(d)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d, 4 * d))
        self.mlp.add_module("gelu", QuickGELU() if cfg.mlp_activation == "quick_gelu" else nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * d, d))
        make = lambda: STAdapter(d, cfg.adapter_width, cfg.adapter_kernel_t)
        self.adapter_pre_attn = make() if pre_attn_adapter else None
        self.adapter_pre_mlp = make() if pre_mlp_adapter else None

    def forward(
        self, x: torch.Tensor, num_frames: int, use_conv3d: bool = False, class_token_only: bool = False
    ) -> torch.Tensor:
        """[N, L, D] -> [N, L, D], or [N, 1, D] with class_token_only (the same values at the class token)."""
        if self.adapter_pre_attn is not None:
            x = self.adapter_pre_attn(x, num_frames, use_conv3d)  # patch tokens feed the keys and values: all of them
        if class_token_only:
            return self.class_token_forward(x, self.ln_1(x))
        x = x + self.attn(self.ln_1(x))
        if self.adapter_pre_mlp is not None:
            x = self.adapter_pre_mlp(x, num_frames, use_conv3d)
        return x + self.mlp(self.ln_2(x))

    def class_token_forward(self, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """The block's output at the class token [N, 1, D], from its tokens after the pre-attention adapter
        x [N, L, D] and their ln_1, normed [N, L, D] (what attention reads; Grad-CAM takes its gradient).

        Tokens mix only in attention, so the class token's output needs its own query and MLP row only;
        the pre-MLP adapter changes patch tokens only, so it has nothing to do here."""
        x = x[:, :1] + self.attn.class_token_forward(normed)  # [N, 1, D]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        with_adapter = set(cfg.adapter_blocks())
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(
                cfg, i in with_adapter and cfg.adapter_pre_attn, i in with_adapter and cfg.adapter_pre_mlp
            )
            for i in range(cfg.layers)
        )

    def forward(
        self, x: torch.Tensor, num_frames: int, use_conv3d: bool = False, trim_last_block: bool = False
    ) -> torch.Tensor:
        """[N, L, D] -> [N, L, D], or [N, 1, D] (the class token) with trim_last_block."""
        last = len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks):
            x = block(x, num_frames, use_conv3d, class_token_only=trim_last_block and i == last)
        return x


class STAdapterViT(nn.Module):
    """Video classifier: frozen CLIP ViT + trainable ST-Adapters and linear head.

    Input [B, 3, T, H, W] (CLIP-normalized frames), output logits [B, num_classes].
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        scale = d**-0.5
        self.conv1 = nn.Conv2d(3, d, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(d))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.tokens_per_frame, d))
        self.ln_pre = LayerNorm(d)
        self.transformer = Transformer(cfg)
        self.ln_post = LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(d, cfg.num_classes)
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)
        self.freeze_backbone()
        self.use_conv3d = True  # the adapters' temporal conv form (see STAdapter); set by `temporal_conv`

    @contextlib.contextmanager
    def temporal_conv(self, form: str):
        """Run the adapters' temporal conv as `form` inside the block: "conv3d" (nn.Conv3d, the default) or
        "shift" (shifted multiply-adds, what the exporter writes). The same values either way."""
        if form not in TEMPORAL_CONV_FORMS:
            raise ValueError(f"unknown temporal conv form {form!r}; choose one of {', '.join(TEMPORAL_CONV_FORMS)}")
        old, self.use_conv3d = self.use_conv3d, form == "conv3d"
        try:
            yield self
        finally:
            self.use_conv3d = old

    def freeze_backbone(self) -> None:
        """Only the adapters and the head train."""
        for name, p in self.named_parameters():
            p.requires_grad = is_trainable_name(name)

    def check_input(self, x: torch.Tensor) -> None:
        size = self.cfg.image_size
        ok = x.dim() == 5 and x.shape[1] == 3 and x.shape[3] == size and x.shape[4] == size
        if not ok:
            raise ValueError(
                f"expected a clip batch of shape [B, 3, T, {size}, {size}] "
                f"(batch, RGB, frames, height, width), got {list(x.shape)}"
            )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Frames [B*T, 3, H, W] -> tokens [B*T, L, D]."""
        x = self.conv1(x.to(self.conv1.weight.dtype))  # [B*T, D, H', W']
        x = x.flatten(2).transpose(1, 2)  # [B*T, P, D]
        cls_token = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B*T, 1, D]
        x = torch.cat([cls_token, x], dim=1) + self.positional_embedding.to(x.dtype)  # [B*T, L, D]
        return self.ln_pre(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip [B, 3, T, H, W] -> pooled, normalized class-token features [B, D]: what the head reads."""
        self.check_input(x)
        num_frames = x.shape[2]
        frames = x.transpose(1, 2).flatten(0, 1)  # [B*T, 3, H, W]
        tokens = self.embed(frames)  # [B*T, L, D]
        # Only the class token leaves the transformer, so the last block computes it alone (exact; see
        # ResidualAttentionBlock.class_token_forward).
        tokens = self.transformer(tokens, num_frames, self.use_conv3d, trim_last_block=True)  # [B*T, 1, D]
        return self.pool(tokens, num_frames)

    def pool(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Tokens after the last block [B*T, L or 1, D] -> the frames' class tokens averaged over time,
        through ln_post [B, D]."""
        cls_token = tokens[:, 0].unflatten(0, (-1, num_frames))  # [B, T, D]
        return self.ln_post(cls_token.mean(dim=1))  # [B, D]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, D] -> logits [B, num_classes]."""
        return self.fc(self.dropout(features).to(self.fc.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # [B, num_classes]


def is_trainable_name(name: str) -> bool:
    """True for parameters that ST-Adapter trains: the adapters and the head `fc`."""
    return ".adapter_pre_" in name or name.startswith("fc.")


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights only, as the reference implementation's checkpoints hold them."""
    return {k: v for k, v in model.state_dict().items() if is_trainable_name(k)}

"""Architecture configs and named presets for CLIP ViT + ST-Adapter."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MLP_ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class ModelConfig:
    # CLIP vision transformer
    width: int = 768
    layers: int = 12
    heads: int = 12
    patch_size: int = 16
    image_size: int = 224
    # the MLP's activation: CLIP's QuickGELU (OpenAI's ViTs and open_clip's -quickgelu ones) or exact GELU
    # (most of open_clip's LAION-trained ViTs, Hugging Face configs with hidden_act "gelu")
    mlp_activation: str = "quick_gelu"
    # ST-Adapter: placed in the last `adapter_layers` blocks
    adapter_width: int = 384
    adapter_layers: int = 12
    adapter_pre_attn: bool = False
    adapter_pre_mlp: bool = True
    adapter_kernel_t: int = 3
    # head
    num_classes: int = 400
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_activation must be one of {MLP_ACTIVATIONS}, got {self.mlp_activation!r}")
        if not 0 <= self.adapter_layers <= self.layers:
            raise ValueError(f"adapter_layers must be in [0, {self.layers}], got {self.adapter_layers}")
        if self.adapter_kernel_t % 2 != 1:
            raise ValueError(f"adapter_kernel_t must be odd, got {self.adapter_kernel_t}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid + 1

    def adapter_blocks(self) -> range:
        return range(self.layers - self.adapter_layers, self.layers)

    def clip_gflops(self, num_frames: int) -> float:
        """Forward GFLOP (1 multiply-add = 2 FLOP) of one clip: 303 for B/16 12x384 at 8 frames."""
        d, length, patches = self.width, self.tokens_per_frame, self.grid**2
        embed = 2 * patches * d * 3 * self.patch_size**2
        block = 24 * length * d * d + 4 * length * length * d  # qkv, out_proj, MLP 4x; q@k and attn@v
        adapters = self.adapter_layers * (int(self.adapter_pre_attn) + int(self.adapter_pre_mlp))
        adapter = 4 * patches * d * self.adapter_width + 2 * patches * self.adapter_width * self.adapter_kernel_t
        head = 2 * d * self.num_classes
        return (num_frames * (embed + self.layers * block + adapters * adapter) + head) / 1e9

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in LEGACY_FIELDS}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d)


# Fields older versions wrote that no longer belong to the architecture (num_frames: the model takes any
# T; the clip length is the preprocessing's). Read and ignored, so old checkpoints and bundles load.
LEGACY_FIELDS = ("num_frames",)

VIT_B16 = dict(width=768, layers=12, heads=12, patch_size=16, image_size=224)
VIT_L14 = dict(width=1024, layers=24, heads=16, patch_size=14, image_size=224)

PRESETS: dict[str, ModelConfig] = {
    # K400 recipe: one adapter before each MLP in all 12 blocks
    "vit_b16_adapter12x384": ModelConfig(**VIT_B16, adapter_layers=12, adapter_pre_mlp=True),
    # SSv2 recipe: one before attention and one before the MLP in all 12 blocks
    "vit_b16_adapter24x384": ModelConfig(
        **VIT_B16, adapter_layers=12, adapter_pre_attn=True, adapter_pre_mlp=True, num_classes=174
    ),
    "vit_l14_adapter24x384": ModelConfig(**VIT_L14, adapter_layers=24, adapter_pre_mlp=True),
    "vit_l14_adapter48x384": ModelConfig(
        **VIT_L14, adapter_layers=24, adapter_pre_attn=True, adapter_pre_mlp=True, num_classes=174
    ),
    # Small enough to train on 2 CPU cores in minutes; for tests, the synthetic recipe and the quickstart.
    "tiny": ModelConfig(
        width=64,
        layers=3,
        heads=2,
        patch_size=8,
        image_size=32,
        adapter_width=32,
        adapter_layers=3,
        adapter_pre_attn=True,
        adapter_pre_mlp=True,
        num_classes=6,
        dropout=0.0,
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


# (width, layers, patch) of the CLIP ViTs released by OpenAI (B/32, B/16, L/14) and open_clip (H/14).
BACKBONE_NAMES = {
    (768, 12, 32): "ViT-B/32",
    (768, 12, 16): "ViT-B/16",
    (1024, 24, 14): "ViT-L/14",
    (1280, 32, 14): "ViT-H/14",
}


def backbone_name(cfg: ModelConfig) -> str:
    """A readable name for the backbone part of a config: 'ViT-B/16', 'ViT-L/14@336px', 'ViT(w=64,l=3,p=8)@32px'."""
    shape = (cfg.width, cfg.layers, cfg.patch_size)
    name = BACKBONE_NAMES.get(shape, f"ViT(w={cfg.width},l={cfg.layers},p={cfg.patch_size})")
    return name if cfg.image_size == 224 else f"{name}@{cfg.image_size}px"


def presets_with_backbone(cfg: ModelConfig) -> list[str]:
    """Presets whose backbone shape matches `cfg` (used to suggest a fix in error messages)."""
    keys = ("width", "layers", "patch_size", "image_size")
    return [n for n, p in PRESETS.items() if all(getattr(p, k) == getattr(cfg, k) for k in keys)]

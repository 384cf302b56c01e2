"""Sharded multi-view evaluation: every validation video counted exactly once over all ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from .distributed import all_reduce_sum


class ShardedSampler(Sampler[int]):
    """Rank r of W reads samples r, r+W, r+2W, ...: no padding, so nothing is counted twice.

    (DistributedSampler pads the last round with repeats so every rank has the same length; the
    reduction below sums counts instead, so ranks may differ by one sample.)
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    progress: bool = False,
) -> dict:
    """Top-1/top-5 (percent) and mean loss over the rank-sharded `loader`, reduced across ranks.

    Each item is (views [V, 3, T, S, S], label, index); scores are the softmax per view, averaged
    over the views, as the reference evaluates.
    """
    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    for clips, labels, _ in tqdm(loader, desc="eval", leave=False, disable=not progress):
        batch, views = clips.shape[:2]
        clips = clips.to(device, non_blocking=True).flatten(0, 1)  # [B*V, 3, T, S, S]
        labels = labels.to(device)
        with autocast or contextlib.nullcontext():
            logits = model(clips)  # [B*V, C]
        probs = logits.float().softmax(dim=-1).view(batch, views, -1).mean(dim=1)  # [B, C]
        top = probs.topk(min(5, probs.shape[-1]), dim=-1).indices  # [B, k]
        hits = top == labels[:, None]  # [B, k]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").item()
        count += batch
    correct1, correct5, loss_sum, count = all_reduce_sum([correct1, correct5, loss_sum, count], device)
    n = max(count, 1.0)
    return {
        "acc1": 100.0 * correct1 / n,
        "acc5": 100.0 * correct5 / n,
        "loss": loss_sum / n,
        "count": int(count),
    }

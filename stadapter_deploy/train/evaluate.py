"""Sharded multi-view evaluation: every validation video counted exactly once over all ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from ..progress import progress_bar
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
    over the views, as the reference evaluates. When the dataset stood in another video for a broken
    one (the returned index differs from the one asked for), that item is left out and counted in
    `skipped`, so no video is counted twice.
    """
    model.eval()
    asked = iter(loader.sampler) if isinstance(getattr(loader, "sampler", None), ShardedSampler) else None
    correct1 = correct5 = loss_sum = count = skipped = 0.0
    bar = progress_bar(len(loader), "eval", enabled=progress)
    for clips, labels, indices in loader:
        batch, views = clips.shape[:2]
        clips = clips.to(device, non_blocking=True).flatten(0, 1)  # [B*V, 3, T, S, S]
        labels = labels.to(device)
        with autocast or contextlib.nullcontext():
            logits = model(clips)  # [B*V, C]
        probs = logits.float().softmax(dim=-1).view(batch, views, -1).mean(dim=1)  # [B, C]
        if asked is not None:
            keep = torch.tensor([int(i) == next(asked) for i in indices], device=device)  # [B]
            skipped += batch - int(keep.sum())
            probs, labels, batch = probs[keep], labels[keep], int(keep.sum())
        top = probs.topk(min(5, probs.shape[-1]), dim=-1).indices  # [B, k]
        hits = top == labels[:, None]  # [B, k]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").item()
        count += batch
        bar.update(1)
    bar.close()
    totals = all_reduce_sum([correct1, correct5, loss_sum, count, skipped], device)
    correct1, correct5, loss_sum, count, skipped = totals
    n = max(count, 1.0)
    return {
        "acc1": 100.0 * correct1 / n,
        "acc5": 100.0 * correct5 / n,
        "loss": loss_sum / n,
        "count": int(count),
        "skipped": int(skipped),
    }

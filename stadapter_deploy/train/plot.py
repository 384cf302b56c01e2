"""The training curves: loss and accuracy per epoch, from log.jsonl records, as one PNG."""

from __future__ import annotations

import os
from pathlib import Path


def plot_curves(records: list[dict], path: Path) -> Path:
    """Draw train/val loss and val top-1/top-5 against epoch; written atomically (tmp + rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], marker="o", label="train")
    val = [(r["epoch"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if val:
        ax_loss.plot(*zip(*val, strict=True), marker="o", label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_loss.legend()
    for key, label in (("val_acc1", "val top-1"), ("val_acc5", "val top-5")):
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if points:
            ax_acc.plot(*zip(*points, strict=True), marker="o", label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy", ylim=(0, 100))
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path

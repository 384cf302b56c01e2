"""Scale-out under torchrun: each rank takes a disjoint shard of the inputs and writes its own part file;
rank 0 merges the parts into --out at the end.

The process group is torch.distributed over gloo, joined from torchrun's environment as training's
sharded evaluation joins it (stadapter_deploy/train/distributed.py); it is used only for barriers, so
gloo serves CPU and GPU ranks alike. Ranks shard the input list before resuming drops the videos
already done, so every rank computes the same shards whenever it reads the files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from .output import read_results, write_all

# A rank that finishes early waits at the final barrier for the slowest: allow a long archive.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # ranks on this machine, which share its cores

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: list) -> list:
        """Items rank, rank + W, rank + 2W, ...: disjoint, and together all of them."""
        return items[self.rank :: self.world_size]


def local_rank() -> Rank:
    """This process's rank as torchrun's environment gives it, without joining anything."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Rank()
    return Rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def join() -> Rank:
    """This process's rank; under torchrun with more than one process, joins the gloo group."""
    rank = local_rank()
    if rank.distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return rank


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def leave() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def part_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.part{rank}")


def part_paths(out: Path) -> list[Path]:
    """Part files of any earlier run too (it may have had another world size)."""
    return sorted(p for p in out.parent.glob(f"{out.name}.part*") if p.name[len(out.name) + 5 :].isdigit())


def merge_parts(out: Path, timeline: bool) -> list[dict]:
    """Append the parts' records of videos not yet in `out` to it (at once), then delete the parts."""
    records = read_results(out, timeline)
    known = {r["video"] for r in records}
    for part in part_paths(out):
        new = [r for r in read_results(part, timeline) if r["video"] not in known]
        known |= {r["video"] for r in new}
        records += new
    write_all(out, records)
    for part in part_paths(out):
        part.unlink()
    return records

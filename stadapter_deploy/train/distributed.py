"""Process-group wiring: the same code runs as one process or under torchrun (NCCL on GPU, gloo on CPU).

Under `torchrun --max-restarts N` a dead worker makes torchrun stop the others and start the whole
group again (TORCHELASTIC_RESTART_COUNT counts the attempts). Every attempt meets in the same store,
torchrun's, which still holds the keys of the attempt before: the gloo addresses of workers that are
gone. Each attempt therefore keeps its keys under its own prefix, and every wait for the other
processes, set-up included, ends after `timeout` with one line instead of hanging.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import ConfigError, STAdapterError

T = TypeVar("T")


class ProcessGroupError(STAdapterError):
    """The processes of a torchrun job could not meet (set-up failed or timed out)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How many times torchrun has restarted the worker group (0: the first attempt, or no torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def pick_device(device: str, local_rank: int) -> torch.device:
    """device: "auto" (CUDA when present), "cpu" or "cuda"."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def attempt_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """torchrun's store (MASTER_ADDR:MASTER_PORT), with this attempt's keys under a prefix of their own."""
    store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    return dist.PrefixStore(f"stadapter/attempt-{restart_count()}/", store)


def setup(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the torchrun process group if launched by torchrun; otherwise a single process.

    `timeout_s` bounds the set-up and every collective: a process that waits longer for the others fails.
    """
    if not launched_by_torchrun():
        return DistInfo(device=pick_device(device, 0))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = timedelta(seconds=timeout_s)
        try:
            store = attempt_store(rank, world_size, timeout)
            dist.init_process_group(
                backend,
                store=store,
                rank=rank,
                world_size=world_size,
                timeout=timeout,
                device_id=dev if dev.type == "cuda" else None,
            )
        except (RuntimeError, ValueError) as e:  # DistStoreError, DistNetworkError, gloo's connect errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ProcessGroupError(
                f"rank {rank} of {world_size} could not join the process group at "
                f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within {timeout_s:g} s "
                f"(attempt {restart_count()}): {first[:200]}"
            ) from None
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup() -> None:
    if dist.is_initialized():
        gc.collect()  # objects in reference cycles that hold the group (DDP) go first, while it is whole
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks (float64, so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def main_decides(info: DistInfo, decide: Callable[[], T]) -> T:
    """Run `decide` on rank 0 only (it may touch the save folder) and give every rank its answer.

    An STAdapterError raised there is raised on rank 0, which prints it; the other ranks leave with
    the same exit status and no second copy of the message.
    """
    answer, error = None, None
    if info.is_main:
        try:
            answer = decide()
        except STAdapterError as e:
            error = e
    if dist.is_initialized():
        box = [(answer, None if error is None else str(error))]
        dist.broadcast_object_list(box, src=0)
        answer, message = box[0]
        if message is not None and not info.is_main:
            sys.exit(2)  # rank 0 says why
    if error is not None:
        raise error
    return answer

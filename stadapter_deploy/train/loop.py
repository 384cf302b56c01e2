"""The training loop of the ST-Adapter recipes: one process, or one per GPU under torchrun.

run(cfg) does, in order: (synthetic: generate the data if absent) -> check the config -> build the
model -> resume if asked -> per epoch: train, evaluate, log, plot, checkpoint -> save the final model.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import random
import resource
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import ConfigError, STAdapterError, VideoError, WeightsError
from ..model import build_model, load_strict, trainable_state_dict
from ..model.config import backbone_name
from ..model.vit import LayerNorm, STAdapterViT, is_trainable_name
from ..model.weights import load_adapter_checkpoint
from ..progress import progress_bar
from ..video.limits import DecodeLimits
from . import checkpoint as ckpt
from . import data, run_folder
from . import distributed as D
from .config import TrainConfig, batch_plan, check_paths
from .evaluate import ShardedSampler, evaluate
from .optim import build_optimizer, build_scheduler, scaled_lr
from .plot import plot_curves


def run(cfg: TrainConfig, limits: DecodeLimits | None = None) -> dict:
    """Train (or only evaluate) as `cfg` says, decoding within `limits` (the app's decode settings); returns
    the last log record (or the eval result)."""
    dist = D.setup(cfg.device, cfg.dist_timeout)
    trainer = None
    try:
        if cfg.dataset == "synthetic":
            data.ensure_synthetic_dataset(cfg, dist)
        check_paths(cfg)
        trainer = Trainer(cfg, dist, limits)
        return trainer.fit()
    finally:
        if trainer is not None:
            trainer.close()  # an exception's traceback still holds the trainer
        data.stop_logging_skipped()
        D.cleanup()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated by tensors; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker_init(worker_id: int, skip_log: Path) -> None:
    torch.set_num_threads(1)  # workers decode; the main process computes
    data.log_skipped_videos(skip_log)  # already inherited under fork; needed under spawn


def cast_backbone(model: nn.Module, dtype: torch.dtype) -> None:
    """Frozen weights to `dtype` (as the reference does on GPU); LayerNorms, adapters and head stay fp32."""
    for module in model.modules():
        if isinstance(module, LayerNorm):
            continue
        for p in module.parameters(recurse=False):
            if not p.requires_grad:
                p.data = p.data.to(dtype)


def freeze_unreachable_adapter(model: STAdapterViT) -> None:
    """The last block computes the class token only, which its pre-MLP adapter (it changes patch tokens
    only) never reaches: that adapter gets no gradient, and DDP refuses a trainable parameter without one.
    It is kept (and saved) as initialized."""
    last = model.transformer.resblocks[-1]
    if last.adapter_pre_mlp is not None:
        last.adapter_pre_mlp.requires_grad_(False)


LOG_EVERY_STEPS = 10  # optimizer steps between two readings of the loss for the progress bar


def bar_shows(bar) -> bool:
    return not getattr(bar, "disable", False)  # tqdm(disable=True) on the ranks that show nothing


def check_finite(mean_loss: float, epoch: int, step: int) -> float:
    """The epoch's mean loss so far, refused once it is not a number (before any checkpoint holds it)."""
    if not math.isfinite(mean_loss):
        raise FloatingPointError(
            f"training loss is {mean_loss} in epoch {epoch + 1} by step {step}; lower --lr-per-256"
        )
    return mean_loss


class Trainer:
    def __init__(self, cfg: TrainConfig, dist: D.DistInfo, limits: DecodeLimits | None = None):
        self.cfg, self.dist, self.device = cfg, dist, dist.device
        self.save_dir = Path(cfg.save_dir)
        D.main_decides(dist, lambda: run_folder.check_writable(self.save_dir))  # before any work
        self.save_dir.mkdir(parents=True, exist_ok=True)  # every rank appends to the skipped-video list
        # A torchrun restart (--max-restarts) is a resume, and the first attempt already did any --overwrite.
        self.restarted = D.restart_count() > 0
        self.recipe = recipe = cfg.recipe
        self.batch_size, self.accum_steps = batch_plan(recipe.total_batch, dist.world_size, cfg.batch_size)
        self.precision = self.resolve_precision()
        self.class_names = data.class_names(cfg)

        seed_everything(cfg.seed)  # the same initial head/adapters on every rank
        self.model = self.build_model()
        self.preprocessing = recipe.preprocessing.replace(size=self.model.cfg.image_size)
        self.train_set, self.val_set = data.build_datasets(cfg, self.preprocessing, limits)
        self.train_loader, self.val_loader = self.build_loaders()
        self.steps_per_epoch = len(self.train_loader) // self.accum_steps
        if self.steps_per_epoch < 1 and not cfg.eval_only:
            raise ConfigError(
                f"{len(self.train_set)} training videos are fewer than one effective batch of "
                f"{recipe.total_batch}; lower --total-batch"
            )
        self.lr = scaled_lr(recipe.lr_per_256, recipe.total_batch)
        self.optimizer = build_optimizer(self.model, self.lr, recipe.weight_decay)
        warmup_steps = round(recipe.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, warmup_steps, recipe.epochs * self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.start_epoch, self.records = 0, []
        self.identity = None
        if not cfg.eval_only:  # evaluating a model does not make the folder a run's
            self.identity = run_folder.run_identity(cfg, self.model.cfg.to_dict(), self.preprocessing, dist.world_size)
            D.main_decides(dist, self.claim_folder)
        if dist.is_main and not cfg.eval_only:
            self.print_plan()
        self.resume()
        if dist.is_main:
            ckpt.remove_torn_temp_files(self.save_dir)
            if self.start_epoch == 0:
                self.skip_log.unlink(missing_ok=True)  # a fresh run starts a fresh list
        D.barrier()
        self.ddp_model = self.model
        if dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)

    def close(self) -> None:
        """Let go of what uses the process group or worker processes, before the group is destroyed.

        DDP sits in a reference cycle that only the garbage collector frees: left to chance, it (with
        the gloo group its reducer holds) was freed at interpreter exit, after destroy_process_group,
        and that teardown aborted now and then ("terminate called without an active exception").
        """
        self.ddp_model = self.train_loader = self.val_loader = None
        gc.collect()

    # ---- setup -----------------------------------------------------------------------------------

    def resolve_precision(self) -> str:
        p = self.cfg.precision
        if p == "auto":
            return "fp16" if self.device.type == "cuda" else "fp32"
        if p == "fp16" and self.device.type != "cuda":
            raise ConfigError("--precision fp16 needs a CUDA GPU; on CPU use fp32 or bf16")
        return p

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def build_model(self) -> STAdapterViT:
        """The recipe's preset; with --clip and no --preset, the backbone the file holds (width, layers,
        heads, patch, input size) with the recipe's adapters in every block."""
        cfg = self.cfg
        try:
            if cfg.clip is not None and not cfg.preset_given:
                model = build_model(clip=cfg.clip, adapter_layout=cfg.recipe.preset, **cfg.model_overrides())
            else:
                model = build_model(cfg.recipe.preset, clip=cfg.clip, **cfg.model_overrides())
        except STAdapterError:
            raise
        except ValueError as e:  # ModelConfig's own checks, e.g. --adapter-layers beyond the file's blocks
            raise ConfigError(f"bad model option: {e}") from None
        if cfg.pretrain is not None:
            load_adapter_weights(model, cfg.pretrain)
        model.to(self.device)
        if self.device.type == "cuda" and self.precision in ("fp16", "bf16"):
            cast_backbone(model, torch.float16 if self.precision == "fp16" else torch.bfloat16)
        freeze_unreachable_adapter(model)  # after the cast: its weights stay fp32 as saved
        return model

    def build_loaders(self) -> tuple[DataLoader, DataLoader]:
        cfg, dist = self.cfg, self.dist
        # DistributedSampler also for one process: the same global order for any world size.
        sampler = DistributedSampler(
            self.train_set, dist.world_size, dist.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        # Broken videos met by any process or DataLoader worker are appended to one file.
        self.skip_log = self.save_dir / "skipped_videos.txt"
        data.log_skipped_videos(self.skip_log)
        init = partial(worker_init, skip_log=self.skip_log)
        common = dict(num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda", worker_init_fn=init)
        train_loader = DataLoader(self.train_set, self.batch_size, sampler=sampler, drop_last=True, **common)
        val_sampler = ShardedSampler(len(self.val_set), dist.rank, dist.world_size)
        eval_batch = cfg.eval_batch_size or max(1, self.batch_size // self.preprocessing.views)
        val_loader = DataLoader(self.val_set, eval_batch, sampler=val_sampler, **common)
        return train_loader, val_loader

    def claim_folder(self) -> None:
        cfg = self.cfg
        resuming = cfg.resume is not None or cfg.auto_resume or self.restarted
        overwrite = cfg.overwrite and not self.restarted
        run_folder.claim(self.save_dir, self.identity, overwrite=overwrite, resuming=resuming)

    def check_same_run(self, path: Path, state: dict) -> None:
        """Auto-resume takes a checkpoint only if it was written by this run (same identity)."""
        if self.identity is None:  # --eval-only evaluates whatever model it finds
            return
        recorded = state.get("run")
        if recorded is None:
            raise ConfigError(
                f"{path} carries no run identity, so whether it is this run's is unknown: pass --resume {path} "
                "to continue from it anyway, or --overwrite to start over"
            )
        if recorded != self.identity:
            raise ConfigError(
                f"{path} was written by another run ({run_folder.differences(recorded, self.identity)}): "
                "use a new --save-dir, or --overwrite to start over"
            )

    def choose_checkpoint(self) -> Path | None:
        """Rank 0 picks what every rank resumes from: with --auto-resume or after a torchrun restart the
        newest readable checkpoint of this run (unreadable ones are set aside with a line each), else
        --resume's file (a restart goes back to it only while the run has saved nothing newer)."""
        cfg = self.cfg
        if cfg.auto_resume or self.restarted:
            existing = ckpt.list_checkpoints(self.save_dir)
            found = ckpt.latest_valid_checkpoint(self.save_dir, self.check_same_run, set_aside=not cfg.eval_only)
            if found is not None:
                path, self.resume_state = found
                return path
            if cfg.resume is None:
                why = f"none of the {len(existing)} checkpoints is readable" if existing else "no checkpoint"
                who = f"torchrun restart {D.restart_count()}" if self.restarted else "auto-resume"
                print(f"{who}: {why} in {self.save_dir}; starting at epoch 1", flush=True)
                return None
        if cfg.resume is None:
            return None
        self.resume_state = ckpt.load_training_checkpoint(cfg.resume)
        recorded = self.resume_state.get("run")
        if self.identity is not None and recorded is not None and recorded != self.identity:
            diff = run_folder.differences(recorded, self.identity)
            print(f"resume: {cfg.resume} was written with other settings ({diff}); continuing as asked", flush=True)
        return cfg.resume

    def resume(self) -> None:
        cfg = self.cfg
        self.resume_state = None
        path = D.main_decides(self.dist, self.choose_checkpoint)
        if path is None:
            return
        state = self.resume_state or ckpt.load_training_checkpoint(path)  # rank 0 has read it already
        self.resume_state = None
        load_strict(self.model, state["model"], source=str(path), part="trainable")
        if not cfg.eval_only:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["lr_sched"])
            if state["loss_scaler"]:
                self.scaler.load_state_dict(state["loss_scaler"])
        self.start_epoch = int(state["next_epoch"])
        self.records = [r for r in state.get("log", []) if r["epoch"] < self.start_epoch]
        if self.dist.is_main:
            how = f"torchrun restart {D.restart_count()}: " if self.restarted else ""
            print(f"{how}resumed from {path} after epoch {self.start_epoch}/{self.recipe.epochs}", flush=True)

    # ---- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict:
        cfg = self.cfg
        if cfg.eval_only:
            return self.eval_only()
        epochs = self.recipe.epochs
        last_epoch = epochs if cfg.stop_after_epochs is None else min(epochs, cfg.stop_after_epochs)
        for epoch in range(self.start_epoch, last_epoch):
            # Reseeded from (seed, epoch, rank): a resumed run draws exactly what a straight run draws.
            seed_everything(cfg.seed + 1000 * epoch + self.dist.rank)
            self.train_loader.sampler.set_epoch(epoch)
            self.train_set.set_epoch(epoch)
            with self.reading_videos():
                record = {"epoch": epoch, **self.train_one_epoch(epoch)}
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == epochs:
                    record |= self.validate()
            record["max_mem_mb"] = round(peak_memory_mb(self.device), 1)
            self.records.append(record)
            self.end_epoch(epoch, record)
        if last_epoch == epochs and self.dist.is_main:
            self.save_final()
        D.barrier()
        return self.records[-1] if self.records else {}

    def train_one_epoch(self, epoch: int) -> dict:
        self.ddp_model.train()
        micro_batches = self.steps_per_epoch * self.accum_steps
        # Summed on the device (float64, as Python's float was): reading a loss waits for the device, so it
        # is read only when the bar shows it, every LOG_EVERY_STEPS steps, and once at the end.
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        clips = 0
        skipped_before = self.train_set.skipped
        bar = progress_bar(self.steps_per_epoch, f"epoch {epoch + 1}/{self.recipe.epochs}", self.dist.is_main)
        start = time.perf_counter()
        for i, (x, labels, _) in enumerate(self.train_loader):
            if i >= micro_batches:
                break
            x, labels = x.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            last_micro = (i + 1) % self.accum_steps == 0
            sync = contextlib.nullcontext() if last_micro or not self.dist.distributed else self.ddp_model.no_sync()
            with sync:
                with self.autocast():
                    logits = self.ddp_model(x)  # [B, C]
                loss = F.cross_entropy(logits.float(), labels)
                self.scaler.scale(loss / self.accum_steps).backward()
            loss_sum += loss.detach().double() * len(labels)
            clips += len(labels)
            if last_micro:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                step = (i + 1) // self.accum_steps
                if bar_shows(bar) and (step % LOG_EVERY_STEPS == 0 or step == self.steps_per_epoch):
                    mean = check_finite(loss_sum.item() / clips, epoch, step)
                    bar.set_postfix(loss=f"{mean:.3f}", lr=f"{self.current_lr():.2e}")
                bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - start
        loss_sum, clips, skipped = D.all_reduce_sum(
            [loss_sum.item(), clips, self.train_set.skipped - skipped_before], self.device
        )
        return {
            "train_loss": check_finite(loss_sum / max(clips, 1), epoch, self.steps_per_epoch),
            "lr": self.current_lr(),
            "clips_per_s": round(clips / elapsed, 2),
            "step": (epoch + 1) * self.steps_per_epoch,
            "epoch_time_s": round(elapsed, 2),
            "skipped_videos": int(skipped),
        }

    def validate(self) -> dict:
        result = evaluate(self.model, self.val_loader, self.device, self.autocast(), progress=self.dist.is_main)
        return {
            "val_acc1": result["acc1"],
            "val_acc5": result["acc5"],
            "val_loss": result["loss"],
            "val_videos": result["count"],
            "val_skipped": result["skipped"],
        }

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # ---- outputs ---------------------------------------------------------------------------------

    def end_epoch(self, epoch: int, record: dict) -> None:
        D.barrier()  # every rank's skipped-video lines are on disk
        if not self.dist.is_main:
            return
        skipped = data.read_skipped(self.skip_log)
        state = {
            "model": {k: v.float() for k, v in trainable_state_dict(self.model).items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_sched": self.scheduler.state_dict(),
            "loss_scaler": self.scaler.state_dict(),
            "next_epoch": epoch + 1,
            "model_config": self.model.cfg.to_dict(),
            "args": self.cfg.to_dict(),
            "log": self.records,
            "run": self.identity,
        }
        with self.saving():
            # The checkpoint first: once it is on disk, nothing of this epoch can be lost.
            ckpt.atomic_torch_save(state, ckpt.checkpoint_path(self.save_dir, epoch))
            ckpt.prune_checkpoints(self.save_dir, self.cfg.keep_last, newest=epoch)
            # rewritten whole: a resume drops lost epochs
            ckpt.write_text_atomically(self.save_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
            with ckpt.writing(self.save_dir / "curves.png"):
                plot_curves(self.records, self.save_dir / "curves.png")
        note = f" ({len(skipped)} broken videos skipped so far, listed in {self.skip_log})" if skipped else ""
        print(self.summary(record) + note, flush=True)

    @contextlib.contextmanager
    def saving(self):
        """A failed write says what is safe: the newest checkpoint on disk, the one to resume from."""
        try:
            yield
        except ckpt.DiskError as e:
            found = ckpt.list_checkpoints(self.save_dir)
            if found:
                safe = f"{found[-1][1].name} is the newest checkpoint; free space, then rerun with --auto-resume"
            else:
                safe = "no checkpoint was saved yet; free space, then run again"
            raise ckpt.DiskError(f"{e}; {safe}") from None

    def summary(self, r: dict) -> str:
        text = f"epoch {r['epoch'] + 1}/{self.recipe.epochs}: train_loss {r['train_loss']:.4f}, lr {r['lr']:.2e}"
        if "val_acc1" in r:
            text += f", val_acc1 {r['val_acc1']:.2f}, val_acc5 {r['val_acc5']:.2f}"
        return text + f", {r['clips_per_s']:.1f} clips/s, peak mem {r['max_mem_mb']:.0f} MB"

    def model_summary(self) -> str:
        """Which model, where its backbone came from, and the adapters: 'ViT-B/32 (inferred from ViT-B-32.pt; ...)'."""
        cfg, m = self.cfg, self.model.cfg
        if cfg.clip is None:
            name, origin = cfg.recipe.preset, "random frozen backbone: no --clip"
        elif cfg.preset_given:
            name, origin = cfg.recipe.preset, f"backbone {cfg.clip.name}"
        else:
            name, origin = backbone_name(m), f"inferred from {cfg.clip.name}"
        placement = "+".join(k for k, on in (("pre-attn", m.adapter_pre_attn), ("pre-MLP", m.adapter_pre_mlp)) if on)
        adapters = f"{m.adapter_layers} adapter layers {placement} x {m.adapter_width}"
        adapters = adapters if m.adapter_layers else "no adapters"
        trainable = sum(v.numel() for v in trainable_state_dict(self.model).values())  # adapters + head, as saved
        mlp = "" if m.mlp_activation == "quick_gelu" else f", {m.mlp_activation} MLP"
        return f"{name} ({origin}; {m.image_size}px input{mlp}, {adapters}, {trainable:,} trainable parameters)"

    def print_plan(self) -> None:
        cfg, r = self.cfg, self.recipe
        print(
            f"{r.dataset} recipe on dataset {cfg.dataset}: {len(self.train_set)} train / {len(self.val_set)} val "
            f"videos, {r.num_classes} classes; model {self.model_summary()}; "
            f"batch {r.total_batch} = {self.dist.world_size} x {self.batch_size} x {self.accum_steps} accumulation, "
            f"lr {self.lr:.2e}, {r.epochs} epochs x {self.steps_per_epoch} steps, "
            f"{self.precision} on {self.device}{self.threads_note()}",
            flush=True,
        )

    def threads_note(self) -> str:
        """On a CPU, its compute threads: runs are bit-identical only at the same count (and the same data)."""
        return f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else ""

    def save_final(self) -> Path:
        extra = {
            "preprocessing": self.preprocessing.to_dict(),
            "dataset": self.cfg.dataset,
            "class_names": self.class_names,
            "training": {
                "recipe": self.recipe.dataset,
                "dataset": self.cfg.dataset,
                "clip": None if self.cfg.clip is None else str(self.cfg.clip),
                **{k: self.records[-1].get(k) for k in ("epoch", "val_acc1", "val_acc5")},
            },
        }
        with self.saving():
            path = ckpt.save_final_atomically(self.model, self.save_dir / "final", extra)
        print(f"final model: {path} (export: stadapter-export --checkpoint {path} --out BUNDLE)", flush=True)
        return path

    @contextlib.contextmanager
    def reading_videos(self):
        """Videos failing one after another past the dataset's patience (a DataLoader worker's VideoError
        arrives wrapped in that worker's traceback) stop the run with one line: the last failure, and the
        file that lists every skipped video."""
        try:
            yield
        except VideoError:
            skipped = data.read_skipped(self.skip_log)
            path, _, why = skipped[-1].partition("\t") if skipped else ("", "", "")
            last = f" (the last: {why if path in why else f'{path}: {why}'})" if skipped else ""
            raise VideoError(
                f"{self.train_set.max_attempts} videos in a row failed to decode{last}; every skipped video is "
                f"listed in {self.skip_log}"
            ) from None

    def eval_only(self) -> dict:
        with self.reading_videos():
            result = self.validate()
        if self.dist.is_main:
            (self.save_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
            print(
                f"eval: val_acc1 {result['val_acc1']:.2f}, val_acc5 {result['val_acc5']:.2f} "
                f"over {result['val_videos']} videos",
                flush=True,
            )
        return result


def load_adapter_weights(model: STAdapterViT, path: Path) -> None:
    """--pretrain: the adapter weights of our final/ directory, or of any file `build_model(adapter=...)`
    reads (a reference checkpoint-N.pth); the head stays new."""
    if Path(path).is_dir():
        state = build_model(checkpoint=path).state_dict()
    else:
        state = load_adapter_checkpoint(path)
    adapters = {k: v for k, v in state.items() if is_trainable_name(k) and not k.startswith("fc.")}
    own = {k: v for k, v in model.state_dict().items() if is_trainable_name(k) and not k.startswith("fc.")}
    wrong = sorted(set(own) ^ set(adapters)) + [k for k in own if k in adapters and own[k].shape != adapters[k].shape]
    if wrong:
        raise WeightsError(f"--pretrain {path}: adapter weights do not fit this model: {wrong[:6]}")
    with torch.no_grad():
        for k, v in adapters.items():
            own[k].copy_(v)

"""A distillation run's checkpoints: what goes into one, how a resume takes it back, and the generator
files at the run root. The file format is ``train.state``'s; the names inside it (``G_A.``,
``opt_S``, ``pool.A``, ``rank1.`` ...) are those of every run so far, so old runs resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from crdtool.errors import CrdError
from crdtool.models.checkpoints import save_generator
from crdtool.recipe import Recipe
from crdtool.runtime import Runtime
from crdtool.train import state as ckpt
from crdtool.train.networks import Networks, Optimizers, frozen_copy
from crdtool.train.pool import ImagePool
from crdtool.train.schedule import Progress
from crdtool.train.weight_average import save_student_files


def rank_prefix(rank: int) -> str:
    """Checkpoint key prefix of a rank's own state (rank 0's keys are unprefixed, as in a 1-process run)."""
    return "" if rank == 0 else f"rank{rank}."


def fingerprint(recipe: Recipe, pretrained: bool, world_size: int) -> dict[str, Any]:
    """What a checkpoint must agree on with the recipe that resumes it."""
    r = recipe
    return {"task": r.task, "teacher": r.teacher.spec().to_dict(), "student": r.student.spec().to_dict(),
            # where D's initial weights came from does not matter once a checkpoint holds them
            "discriminator": r.discriminator.model_dump(mode="json", exclude={"checkpoint"}),
            "pretrained": pretrained,
            "seed": r.seed, "batch_size": r.data.batch_size, "world_size": world_size}


class RunCheckpoints:
    """Snapshots of a run's networks, optimizers, image pools (per rank), RNGs, loss scalers and counters."""

    def __init__(self, recipe: Recipe, run_dir: Path, rt: Runtime, nets: Networks, opts: Optimizers,
                 pools: dict[str, ImagePool], progress: Progress, pretrained: bool):
        self.recipe, self.run_dir, self.rt = recipe, run_dir, rt
        self.nets, self.opts, self.pools, self.progress = nets, opts, pools, progress
        self.fingerprint = fingerprint(recipe, pretrained, rt.world_size)

    def pool_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, pool in self.pools.items():
            pool.pack(name, out, {})
        return out

    def snapshot(self, rank_pools: list[dict[str, torch.Tensor]] | None = None) -> ckpt.Snapshot:
        """Everything a resume needs; ``rank_pools`` are every rank's image pools (they differ per data shard)."""
        snap = ckpt.Snapshot()
        for name, m in self.nets.named(with_best=True):
            ckpt.module_weights(name, m, snap)
        for name, opt in self.opts.named():
            ckpt.pack_optimizer(name, opt, snap)
        for k, pools in enumerate(rank_pools or [self.pool_tensors()]):
            snap.tensors.update({rank_prefix(k) + key: t for key, t in pools.items()})
        if self.nets.student_average is not None:
            self.nets.student_average.pack(snap)
        ckpt.capture_rng(snap)  # rank 0's; every rank is seeded alike and draws alike from the global RNG
        ckpt.pack_scalers(self.rt.scaler_state(), snap)
        snap.state["progress"] = self.progress.__dict__.copy()
        snap.state["fingerprint"] = self.fingerprint
        return snap

    def restore(self, path: Path) -> None:
        snap = ckpt.load_checkpoint(path)
        saved, now = snap.state.get("fingerprint"), self.fingerprint
        if saved != now:
            diff = next(k for k in now if saved is None or saved.get(k) != now[k])
            raise CrdError(f"checkpoint {path} does not match this recipe: '{diff}' differs "
                           f"({saved.get(diff) if saved else None!r} vs {now[diff]!r})")
        for name, m in self.nets.named():
            ckpt.load_module_weights(name, m, snap, path)
        if any(k.startswith("best_G_A.") for k in snap.weights):
            best = frozen_copy(self.nets.G_A)
            ckpt.load_module_weights("best_G_A", best, snap, path)
            self.nets.best_G_A = best
        for name, opt in self.opts.named():
            ckpt.unpack_optimizer(name, opt, snap)
        if self.nets.student_average is not None:  # a checkpoint without one: the average starts anew
            self.nets.student_average.unpack(self.nets.student, snap, path)
        prefix = rank_prefix(self.rt.rank)
        pools = {k[len(prefix):]: t for k, t in snap.tensors.items() if k.startswith(prefix + "pool.")}
        for name, pool in self.pools.items():
            pool.unpack(name, pools, self.rt.device)
        ckpt.restore_rng(snap)
        self.rt.load_scaler_state(ckpt.unpack_scalers(snap))
        self.progress.load(snap.state["progress"])

    def save(self) -> None:
        """Called on every rank (it gathers their image pools); only rank 0 writes."""
        rank_pools = self.rt.gather_to_main(self.pool_tensors())
        if not self.rt.is_main:
            return
        ckpt.save_checkpoint(self.run_dir, self.progress.step, self.snapshot(rank_pools),
                             keep=self.recipe.train.keep_checkpoints)
        self.export_generators()

    def export_generators(self) -> None:
        """student.safetensors / teacher.safetensors at the run root: what profile/export/bench read."""
        meta = {"recipe": self.recipe.name, "step": str(self.progress.step)}
        save_student_files(self.nets.student, self.nets.student_average, self.run_dir, meta)
        save_generator(self.nets.teacher, self.run_dir / "teacher.safetensors", meta)

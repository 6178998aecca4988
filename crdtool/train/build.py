"""Everything a distillation run is made of, built from its recipe in the order an uninterrupted run
builds it (the order fixes which random numbers initialise which network: keep it, or runs change)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from crdtool.errors import CrdError
from crdtool.models import generator_stride
from crdtool.models.resnet import residual_taps
from crdtool.recipe import Recipe
from crdtool.runtime import Runtime
from crdtool.train.criteria import Criteria, build_criteria
from crdtool.train.cyclegan_step import CycleGANTeacherStep
from crdtool.train.networks import Networks, Optimizers, build_networks, build_optimizers, distribute
from crdtool.train.pix2pix_step import Pix2PixJointStep
from crdtool.train.pool import ImagePool
from crdtool.train.schedule import Progress, Schedule
from crdtool.train.step_tools import NonfiniteGuard, StepContext
from crdtool.train.student_step import StudentStep
from crdtool.train.teacher_cache import TeacherCache
from crdtool.train.weight_average import average_for


@dataclass
class RunParts:
    """The built run. ``steps`` maps a phase kind ("teacher", "joint", "student") to its step strategy."""

    schedule: Schedule
    progress: Progress
    train_set: Any
    test_set: Any
    eval_inputs: torch.Tensor
    nets: Networks
    opts: Optimizers
    criteria: Criteria
    pools: dict[str, ImagePool]
    teacher_cache: TeacherCache | None
    d_real: str
    steps: dict[str, Callable[..., dict[str, float]]]
    notes: list[str] = field(default_factory=list)  # choices the run made on its own; the CLI prints them


def schedule_kind(recipe: Recipe) -> str:
    if recipe.teacher.checkpoint is not None:
        return "pretrained"
    return "pix2pix" if recipe.task == "pix2pix" else "cyclegan"


def check_sizes(recipe: Recipe) -> None:
    d, src = recipe.data, recipe.source or "recipe"
    for role, g in (("teacher", recipe.teacher), ("student", recipe.student)):
        s = generator_stride(g.spec())
        if d.crop_size % s:
            raise CrdError(f"{src}: data.crop_size {d.crop_size} is not divisible by the {role} generator's "
                           f"stride {s}")
    if recipe.loss.kd == "crd" and recipe.loss.patches > 0 and d.crop_size % recipe.loss.patch_size:
        raise CrdError(f"{src}: data.crop_size {d.crop_size} is not divisible by loss.patch_size "
                       f"{recipe.loss.patch_size}")


def build_datasets(recipe: Recipe, notes: list[str]) -> tuple[Any, Any, torch.Tensor]:
    """(training set, test set, the test inputs every evaluation translates)."""
    from crdtool.data import build_dataset, test_phase

    d = recipe.data
    common = dict(load_size=d.load_size, crop_size=d.crop_size, seed=recipe.seed, direction=d.direction,
                  test_fraction=d.test_fraction, crop_align=d.crop_align, flip=d.flip)
    train_set = build_dataset(d.layout, d.root, "train", train=True, **common)
    test_set = build_dataset(d.layout, d.root, test_phase(d.layout, d.root), train=False, **common)
    if d.layout == "folder":
        notes.append(f"data: training on {train_set.description}; evaluating on {test_set.description}")
    n_eval = min(d.eval_images, len(test_set))
    return train_set, test_set, torch.stack([test_set[i]["A"] for i in range(n_eval)])


def discriminator_real(recipe: Recipe, pretrained: bool, has_discriminator: bool, notes: list[str]) -> str:
    """What D learns as real with a pretrained teacher: "data" (target images; the teacher's outputs are
    fake) or "teacher" (the teacher's outputs; the student's are fake). "auto" picks "teacher" when the
    dataset has no target images (folder layout) and says so in ``notes``."""
    mode, src = recipe.discriminator.real, recipe.source or "recipe"
    has_targets = recipe.data.layout != "folder"
    if mode == "auto":
        mode = "data" if has_targets or not pretrained else "teacher"
        if mode == "teacher" and has_discriminator:
            notes.append("discriminator: no target-domain images (folder layout), so D learns the teacher's "
                         "outputs as real and the student's as fake (discriminator.real = \"teacher\")")
    if recipe.discriminator.sees == "detail" and not pretrained:
        raise CrdError(f"{src}: discriminator.sees = \"detail\" needs a pretrained teacher (teacher.checkpoint): "
                       f"an online teacher's D judges whole images")
    if mode == "teacher" and not pretrained:
        raise CrdError(f"{src}: discriminator.real = \"teacher\" needs a pretrained teacher (teacher.checkpoint)")
    if mode == "data" and not has_targets and has_discriminator:
        raise CrdError(f"{src}: discriminator.real = \"data\" needs target-domain images, and a folder layout "
                       f"has none: use \"teacher\" (or \"auto\"), or discriminator.student = \"none\"")
    return mode


def make_teacher_cache(recipe: Recipe, nets: Networks, kind: str, run_dir: Path,
                       notes: list[str]) -> TeacherCache | None:
    """A cache of the frozen teacher's whole-image outputs (train.teacher_cache), or None.

    A pretrained teacher: in memory and, by default, on disk. An online CycleGAN teacher is frozen through
    each round's student epochs, so its outputs can be reused there too: in memory only (the loop hands the
    cache each round's teacher, and a changed one drops the old entries). Bypassed for a teacher that
    normalises with batch statistics (teacher.batchnorm_stats = "batch" and BatchNorm layers): its output for
    an image depends on the batch around it, so one per image is wrong.
    """
    mode, d, src = recipe.train.teacher_cache, recipe.data, recipe.source or "recipe"
    online = kind == "cyclegan"
    if mode == "auto":
        mode = "disk" if kind == "pretrained" and d.layout == "folder" else "off"
    if mode == "off":
        return None
    if kind not in ("pretrained", "cyclegan") or recipe.task == "pix2pix":
        raise CrdError(f"{src}: train.teacher_cache = \"{mode}\" needs a CycleGAN teacher, pretrained "
                       f"(teacher.checkpoint) or online; a Pix2Pix teacher trains with its student every step")
    if online and mode == "disk":
        raise CrdError(f"{src}: train.teacher_cache = \"disk\" keeps a pretrained teacher's outputs; an online "
                       f"teacher changes every round: use \"memory\"")
    if d.layout not in ("folder", "unaligned"):
        raise CrdError(f"{src}: train.teacher_cache = \"{mode}\" needs data.layout = \"folder\" or "
                       f"\"unaligned\" (their samples say where each crop was cut)")
    if nets.teacher_batchnorm_layers:
        notes.append("teacher cache: off, the teacher normalises with each batch's statistics "
                     "(teacher.batchnorm_stats = \"batch\"), so its output for an image depends on the batch")
        return None
    folder = run_dir / "teacher_cache" if mode == "disk" else None
    where = f"on disk in {folder}" if folder is not None else "in memory"
    when = " once per round (the online teacher is frozen through the round's student epochs)" if online else \
        " once"
    notes.append(f"teacher cache: each training image is translated{when}, whole at {d.load_size} px, and "
                 f"kept {where}; the student's crops are cut from that output")
    if nets.distill is None:
        return TeacherCache(nets.teacher, folder)
    s = generator_stride(recipe.teacher.spec())
    if d.crop_size != d.load_size and d.crop_align % s:
        raise CrdError(f"{src}: loss.lambda_distill with train.teacher_cache needs data.crop_align a multiple of "
                       f"{s}: the cached features of a photo are cut at the crop's offsets, on their {s}-pixel grid")
    blocks = recipe.loss.distill_blocks
    notes.append(f"teacher cache: also the teacher's features after blocks {blocks} (loss.lambda_distill)"
                 + (", on disk only: they are large" if folder is not None else ""))
    return TeacherCache(nets.teacher, folder, taps=residual_taps(nets.teacher, blocks)[0],
                        taps_id="blocks" + ",".join(map(str, blocks)))


def build_run(recipe: Recipe, rt: Runtime, run_dir: Path) -> RunParts:
    """Datasets, networks, losses, optimizers, pools, schedule and step strategies of one run."""
    check_sizes(recipe)
    rt.seed_everything(recipe.seed)
    kind, notes = schedule_kind(recipe), []
    train_set, test_set, eval_inputs = build_datasets(recipe, notes)
    nets = build_networks(recipe, rt, kind)
    d_real = discriminator_real(recipe, kind == "pretrained", nets.D_A is not None, notes)
    cache = make_teacher_cache(recipe, nets, kind, run_dir, notes)
    criteria = build_criteria(recipe, rt)
    opts = build_optimizers(recipe, rt, nets)
    t, pool_size = recipe.train, recipe.train.pool_size if recipe.task != "pix2pix" else 0
    pools = {"A": ImagePool(pool_size, seed=recipe.seed + 11), "B": ImagePool(pool_size, seed=recipe.seed + 12)}
    schedule = Schedule.plan(kind, t, (len(train_set) // rt.world_size) // recipe.data.batch_size)
    nets.student_average = average_for(t, schedule.total_student_steps)
    if nets.student_average is not None:
        notes.append(f"student weights: an EMA with decay {t.ema_decay} from student step "
                     f"{nets.student_average.start_step}; student.safetensors is the average")
    distribute(nets, rt)
    progress = Progress()
    ctx = StepContext(rt, nets, opts, criteria, progress, NonfiniteGuard(t.nonfinite, run_dir, progress), recipe.loss)
    student = StudentStep(ctx, pretrained=kind == "pretrained", paired=recipe.task == "pix2pix", d_real=d_real,
                          d_mode=recipe.discriminator.student, cache=cache, load_size=recipe.data.load_size,
                          crop_size=recipe.data.crop_size, d_sees=recipe.discriminator.sees,
                          distill_blocks=recipe.loss.distill_blocks)
    steps: dict[str, Callable[..., dict[str, float]]] = {"student": student}
    if kind == "cyclegan":
        steps["teacher"] = CycleGANTeacherStep(ctx, pools["A"], pools["B"])
    elif kind == "pix2pix":
        steps["joint"] = Pix2PixJointStep(ctx, student)
    return RunParts(schedule, progress, train_set, test_set, eval_inputs, nets, opts, criteria, pools, cache,
                    d_real, steps, notes)


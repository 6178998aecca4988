"""The AGD search loop: distil a teacher into a supernet under a MAC budget, then derive ``arch.json``.

Objective (arch step): distillation loss to the teacher's output (L1 + VGG content + Gram style when a
VGG-16 file is given; L1 + Gram of the raw outputs otherwise) + lambda * E[MACs] / budget_max.
Weight steps use one half of the training images and the distillation loss only, summed over AGD's
sandwich draws (Gumbel sample + widest + narrowest; in pretraining widest + narrowest + two random
draws, see ``Supernet.sandwich_widths``); architecture steps (first-order, Adam) use the other half. ``BudgetController`` halves lambda while the argmax network is
under the window and doubles it above, checked every ``control_every`` steps.

Budgets are MACs (literature convention, as ``crdtool profile`` reports) **at the recipe's
``data.crop_size``**; the window is ``[budget * (1 - window), budget]``. A 1.4G budget at 256 px is
1.4G * (64/256)^2 = 87.5M at 64 px.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, ValidationError, field_validator, model_validator

from crdtool.errors import CrdError
from crdtool.fileio import ensure_writable_dir, write_bytes_atomic, write_json_atomic
from crdtool.recipe import (
    DataConfig,
    GeneratorConfig,
    RecipeSection,
    dump_toml,
    format_validation_error,
    read_toml,
    resolve_recipe_path,
)
from crdtool.runtime import Runtime
from crdtool.search.space import (
    DEFAULT_RATIOS,
    OPS,
    SearchSpace,
    arch_macs,
    format_macs,
    inherit_weights,
    parse_macs,
    short_arch,
)
from crdtool.search.supernet import BudgetController, Supernet, repair_to_window, space_extremes

SEARCH_RECIPE_VERSION = 1
SEARCH_STATE_VERSION = 1
SUMMARY_FORMAT = "crdtool.search"
_Section = TypeVar("_Section", bound=RecipeSection)


# ---------------------------------------------------------------------------------------------- recipe


class SearchSection(RecipeSection):
    """``[search]``: the space, the schedule and the budget controller."""

    ngf: int = Field(32, ge=4, description="base width: stem ngf/2ngf/4ngf, body 4ngf, head 2ngf/ngf (maxima)")
    cells: int = Field(9, ge=1, le=64)
    ops: list[Literal[OPS]] = Field(default_factory=lambda: list(OPS), min_length=1)  # type: ignore[valid-type]
    width_ratios: list[float] = Field(default_factory=lambda: list(DEFAULT_RATIOS), min_length=1)
    width_multiple: int = Field(8, ge=1)
    expand: int = Field(4, ge=1, le=16)
    budget: Optional[str | float] = Field(None, description="MACs at data.crop_size: '1.4G', 87.5e6; --budget overrides")
    window: float = Field(0.1, gt=0, lt=1, description="accept [budget*(1-window), budget]")
    steps: int = Field(1000, ge=1, description="alternating steps (one weight + one architecture update each)")
    pretrain_steps: int = Field(0, ge=0, description="weight-only supernet steps before the search")
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    arch_lr: float = Field(3e-4, gt=0)
    arch_beta1: float = Field(0.5, ge=0, lt=1)
    arch_beta2: float = Field(0.999, ge=0, lt=1)
    lambda_macs: float = Field(0.01, gt=0, description="initial lambda (small: the teacher's preferences shape "
                               "the logits before the MAC penalty bites); the controller adapts it")
    control_every: int = Field(10, ge=1, description="search steps between lambda updates")
    tau: float = Field(1.0, gt=0, description="Gumbel-softmax temperature (gradient only: samples are hard)")
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(10, ge=1)
    allow_random_teacher: bool = Field(False, description="teacher.checkpoint missing -> random teacher + warning")
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    @field_validator("width_ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if any(not (0 < r <= 1) for r in v):
            raise ValueError("ratios must be in (0, 1]")
        return v

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: Optional[str | float]) -> Optional[str | float]:
        if v is not None:
            try:
                parse_macs(v)
            except CrdError as e:
                raise ValueError(str(e)) from None
        return v

    def space(self, input_nc: int = 3, output_nc: int = 3) -> SearchSpace:
        return SearchSpace(ngf=self.ngf, n_cells=self.cells, ops=tuple(self.ops), ratios=tuple(self.width_ratios),
                           multiple=self.width_multiple, expand=self.expand, input_nc=input_nc, output_nc=output_nc)


class SearchLossSection(RecipeSection):
    """``[loss]``: distillation to the teacher's output; no discriminator."""

    lambda_l1: float = Field(1.0, ge=0)
    vgg_weights: Optional[Path] = Field(None, description=(
        "VGG file: \"weights:vgg19\", the Keras .h5, or a torchvision vgg16 state dict; unset = raw-output Gram"))
    lambda_style: float = Field(1e4, ge=0, description="VGG Gram (style) weight")
    lambda_content: float = Field(10.0, ge=0, description="VGG relu2_2 feature (content) weight")
    lambda_raw_style: float = Field(10.0, ge=0, description="Gram of the raw outputs, used when there is no VGG")


class SearchConfig(RecipeSection):
    """A search recipe: ``name``, ``seed``, ``output_dir``, ``[data]``, ``[teacher]``, ``[loss]``, ``[search]``."""

    version: int = SEARCH_RECIPE_VERSION
    name: str
    seed: int = 0
    output_dir: Optional[Path] = None
    data: DataConfig
    teacher: GeneratorConfig = Field(default_factory=GeneratorConfig)
    loss: SearchLossSection = Field(default_factory=SearchLossSection)
    search: SearchSection = Field(default_factory=SearchSection)
    source: Optional[Path] = Field(None, exclude=True)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v > SEARCH_RECIPE_VERSION:
            raise ValueError(f"search recipe version {v} is newer than this crdtool understands")
        return v

    @model_validator(mode="after")
    def _divisible(self):
        if self.data.crop_size % 4:
            raise ValueError(f"data.crop_size ({self.data.crop_size}) must be divisible by 4")
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else Path("runs") / self.name


def validated(model: type[_Section], data: dict[str, Any], source: str,
              overrides: dict[str, Any] | None = None) -> _Section:
    """``model`` validated from ``data``, or a one-line ``CrdError`` naming the file and key (every search recipe)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise CrdError(format_validation_error(e, source, overrides)) from None


def parse_search_recipe(data: dict[str, Any], source: str = "<recipe>", base: Path | None = None) -> SearchConfig:
    cfg = validated(SearchConfig, data, source)
    base = base or Path.cwd()

    cfg.data.root = resolve_recipe_path(cfg.data.root, base, source)
    cfg.teacher.checkpoint = resolve_recipe_path(cfg.teacher.checkpoint, base, source, "teacher.checkpoint")
    cfg.loss.vgg_weights = resolve_recipe_path(cfg.loss.vgg_weights, base, source, "loss.vgg_weights")
    if cfg.teacher.arch.endswith(".json") and not Path(cfg.teacher.arch).is_absolute():
        cfg.teacher.arch = str((base / cfg.teacher.arch).resolve())
    cfg.source = Path(source) if source != "<recipe>" else None
    return cfg


def load_search_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """Read a search recipe; relative input paths are resolved against the recipe's folder."""
    path = Path(path)
    return parse_search_recipe(read_toml(path, overrides), str(path), path.parent.resolve())


# ---------------------------------------------------------------------------------------------- losses


class SearchLoss(nn.Module):
    """L1 + (VGG content + VGG Gram style) or, without VGG weights, L1 + Gram of the raw outputs."""

    def __init__(self, cfg: SearchLossSection):
        super().__init__()
        self.cfg = cfg
        self.vgg = None
        if cfg.vgg_weights is not None:
            from crdtool.losses import PerceptualLoss, load_vgg  # lazy: only with VGG weights

            self.vgg = PerceptualLoss(load_vgg(cfg.vgg_weights))

    @property
    def description(self) -> str:
        if self.vgg is not None:
            return f"L1 + VGG content + style: {self.vgg.vgg.describe()}"
        return "L1 + Gram style of the raw outputs (no VGG weights given)"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        s, t = student.float(), teacher.float()
        terms = {"l1": self.cfg.lambda_l1 * F.l1_loss(s, t)}
        if self.vgg is not None:
            style, content = self.vgg(student, teacher)
            terms["style"] = self.cfg.lambda_style * style
            terms["content"] = self.cfg.lambda_content * content
        else:
            from crdtool.losses.perceptual import gram

            terms["style"] = self.cfg.lambda_raw_style * F.l1_loss(gram((s + 1) / 2), gram((t + 1) / 2))
        return terms


# ---------------------------------------------------------------------------------------------- results


@dataclass
class SearchResult:
    run_dir: Path
    arch_path: Path | None
    generator_path: Path | None
    log_path: Path
    arch: dict[str, Any] | None
    macs: float | None  # derived network, at ``size``
    size: int
    budget_min: float
    budget_max: float
    inside: bool
    derive: str  # argmax | last_in_window | repaired
    steps: int
    seconds: float
    lam: float
    expected_macs: float
    params: int | None
    loss_description: str
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False


# ---------------------------------------------------------------------------------------------- teacher / data


def _load_teacher(cfg: SearchConfig, warnings: list[str]) -> tuple[nn.Module, str]:
    from crdtool.models import build_generator
    from crdtool.models.checkpoints import load_generator

    ckpt = cfg.teacher.checkpoint
    if ckpt is not None:
        path = Path(ckpt)
        if path.is_dir() and (path / "teacher.safetensors").is_file():
            path = path / "teacher.safetensors"
        if path.exists():
            from crdtool.weights import reference_name

            return load_generator(path), reference_name(path)
        if not cfg.search.allow_random_teacher:
            raise CrdError(f"teacher checkpoint not found: {path} (run the teacher's distill first, or set "
                           f"search.allow_random_teacher = true for a smoke test)")
        warnings.append(f"teacher checkpoint {path} not found: searching against a RANDOMLY INITIALISED "
                        f"{cfg.teacher.spec().describe()} teacher (smoke test only; run its distill first)")
    elif not cfg.search.allow_random_teacher:
        raise CrdError("the search recipe names no teacher.checkpoint (set one, or search.allow_random_teacher = true)")
    else:
        warnings.append(f"no teacher.checkpoint: searching against a RANDOMLY INITIALISED "
                        f"{cfg.teacher.spec().describe()} teacher (smoke test only)")
    torch.manual_seed(cfg.seed)
    return build_generator(cfg.teacher.spec()).eval(), "random"


class _Inputs(torch.utils.data.Dataset):
    """The input-domain images of a fixed index subset, keyed ``(epoch, i)`` like crdtool's datasets."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices, self.epoch = dataset, indices, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        return self.dataset[(epoch, self.indices[i])]["A"]


class _BatchStream:
    """Endless deterministic batches: batch k is a pure function of (seed, k), so resume = skip k."""

    def __init__(self, data: _Inputs, batch_size: int, seed: int, num_workers: int, start: int = 0):
        from crdtool.data import make_loader

        self.data, self.bs, self.seed, self.workers = data, batch_size, seed, num_workers
        self.per_epoch = max(1, len(data) // batch_size)
        self.make_loader = make_loader
        self.k = start
        self._it = None

    def next(self) -> torch.Tensor:
        if self._it is None or self.k % self.per_epoch == 0:
            epoch, skip = divmod(self.k, self.per_epoch)
            self._it = iter(self.make_loader(self.data, self.bs, shuffle=True, seed=self.seed, epoch=epoch,
                                             num_workers=self.workers, drop_last=True, skip_batches=skip))
        self.k += 1
        return next(self._it)


def _build_data(cfg: SearchConfig) -> tuple[_Inputs, _Inputs]:
    from crdtool.data import build_dataset

    d = cfg.data
    if d.synth is not None:
        from crdtool.data.synth import make_synthetic_dataset

        make_synthetic_dataset(d.root, kind=d.synth.kind, size=d.synth.size, count=d.synth.count, seed=d.synth.seed)
    ds = build_dataset(d.layout, d.root, "train", load_size=d.load_size, crop_size=d.crop_size, train=True,
                       seed=cfg.seed, direction=d.direction)
    n = len(ds.files_A) if hasattr(ds, "files_A") else len(ds)
    need = 2 * d.batch_size
    if n < need:
        raise CrdError(f"the search needs at least {need} training images (2 halves x data.batch_size), "
                       f"{d.root} has {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    return _Inputs(ds, order[: n // 2]), _Inputs(ds, order[n // 2:])


# ---------------------------------------------------------------------------------------------- the loop


class _RunFolder:
    """The run folder of a search: checkpoints (``crdtool.train.state``), the log, the recipe copy.

    Works on the state ``Searcher`` sets up (supernet, optimizers, controller, batch streams, step).
    """

    cfg: SearchConfig
    space: SearchSpace
    supernet: Supernet
    controller: BudgetController
    run_dir: Path
    log_path: Path
    size: int
    step: int
    last_inside: dict[str, Any] | None

    def fingerprint(self) -> str:
        """What a resumed run must share with the checkpoint: the space, the data split, the seed."""
        d = {"space": self.space.describe(), "seed": self.cfg.seed, "crop": self.size,
             "batch": self.cfg.data.batch_size, "root": str(self.cfg.data.root)}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def _snapshot(self):
        from crdtool.train import state as st

        snap = st.Snapshot()
        st.module_weights("supernet", self.supernet, snap)
        st.pack_optimizer("weights", self.opt_w, snap)
        st.pack_optimizer("arch", self.opt_a, snap)
        st.capture_rng(snap)
        snap.state.update({"format": "crdtool.search-state", "search_version": SEARCH_STATE_VERSION,
                           "step": self.step, "fingerprint": self.fingerprint(),
                           "controller": self.controller.state_dict(), "last_inside": self.last_inside,
                           "budget": [self.budget_min, self.budget_max]})
        return snap

    def _save(self) -> None:
        from crdtool.train import state as st

        st.save_checkpoint(self.run_dir, self.step, self._snapshot(), keep=1)

    def _restore(self, path: Path) -> None:
        from crdtool.train import state as st

        snap = st.load_checkpoint(path)
        if snap.state.get("format") != "crdtool.search-state":
            raise CrdError(f"{path} is not a search checkpoint (is {self.run_dir} a distill run folder?)")
        if snap.state.get("fingerprint") != self.fingerprint():
            raise CrdError(f"cannot resume {self.run_dir}: the recipe's search space, seed, crop size, batch size or "
                           f"data root differ from the checkpoint's")
        st.load_module_weights("supernet", self.supernet, snap, path)
        st.unpack_optimizer("weights", self.opt_w, snap)
        st.unpack_optimizer("arch", self.opt_a, snap)
        st.restore_rng(snap)
        self.step = int(snap.state["step"])
        self.last_inside = snap.state.get("last_inside")
        self.controller.load_state_dict(snap.state["controller"])
        s = self.cfg.search
        self.w_stream.k = self.step
        self.a_stream.k = max(0, self.step - s.pretrain_steps)
        self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log rows written after the checkpoint we resume from (they will be written again)."""
        if not self.log_path.is_file():
            return
        keep = [ln for ln in self.log_path.read_text().splitlines() if ln.strip()
                and json.loads(ln).get("step", 0) <= self.step]
        write_bytes_atomic(self.log_path, ("\n".join(keep) + "\n" if keep else "").encode())

    def _check_run_dir(self, resume: bool) -> Path | None:
        """Before any long work: the folder is writable, and holds a search iff we resume one."""
        from crdtool.train import state as st

        ensure_writable_dir(self.run_dir)
        last = st.latest_checkpoint(self.run_dir)
        if resume and last is None:
            raise CrdError(f"nothing to resume in {self.run_dir} (no checkpoints/latest.json)")
        if not resume and (last is not None or (self.run_dir / "arch.json").exists()):
            raise CrdError(f"{self.run_dir} already holds a search; pass --resume to continue it, or choose "
                           f"another output folder (--out)")
        return last

    def _start_fresh(self) -> None:
        self.log_path.unlink(missing_ok=True)
        body = dump_toml(self.cfg.model_dump(mode="json", exclude_none=True))
        write_bytes_atomic(self.run_dir / "search_recipe.toml", body.encode())

    def _log(self, row: dict[str, Any]) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")


class Searcher(_RunFolder):
    """State of one search run; ``run()`` executes (or resumes) it. Never prints: see ``on_progress``."""

    def __init__(self, cfg: SearchConfig, budget: float | str | None = None, window: float | None = None,
                 run_dir: Path | None = None, runtime: Runtime | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None):
        self.cfg = cfg
        s = cfg.search
        budget = budget if budget is not None else s.budget
        if budget is None:
            raise CrdError("no MAC budget: pass --budget (e.g. 1.4G) or set search.budget in the recipe")
        self.budget_max = parse_macs(budget)
        self.window = s.window if window is None else float(window)
        if not 0 < self.window < 1:
            raise CrdError(f"--window must be in (0, 1), got {self.window}")
        self.budget_min = self.budget_max * (1 - self.window)
        self.size = cfg.data.crop_size
        self.run_dir = Path(run_dir or cfg.run_dir)
        self.rt = runtime or Runtime.create(s.device, s.precision, channels_last=False)
        self.on_progress = on_progress or (lambda info: None)
        self.warnings: list[str] = []
        self.space = s.space()
        lo, hi = space_extremes(self.space, self.size)
        if self.budget_max < lo or self.budget_min > hi:
            raise CrdError(f"budget window [{format_macs(self.budget_min)}, {format_macs(self.budget_max)}] at "
                           f"{self.size}px is outside what this search space can build ({format_macs(lo)} to "
                           f"{format_macs(hi)}); change --budget or search.ngf")
        self.log_path = self.run_dir / "search_log.jsonl"

    # -- setup
    def _setup(self) -> None:
        cfg, s = self.cfg, self.cfg.search
        torch.manual_seed(cfg.seed)
        self.supernet = self.rt.module(Supernet(self.space))
        self.teacher, self.teacher_source = _load_teacher(cfg, self.warnings)
        self.teacher = self.rt.module(self.teacher).eval().requires_grad_(False)
        self.loss_fn = self.rt.module(SearchLoss(cfg.loss))
        w_half, a_half = _build_data(cfg)
        workers = cfg.data.num_workers
        self.w_stream = _BatchStream(w_half, cfg.data.batch_size, cfg.seed, workers)
        self.a_stream = _BatchStream(a_half, cfg.data.batch_size, cfg.seed + 1, workers)
        self.opt_w = torch.optim.Adam(self.supernet.weight_parameters(), lr=s.lr, betas=(s.beta1, s.beta2))
        self.opt_a = torch.optim.Adam(self.supernet.arch_parameters(), lr=s.arch_lr, betas=(s.arch_beta1, s.arch_beta2))
        self.controller = BudgetController(self.budget_min, self.budget_max, s.lambda_macs)
        self.tables = self.supernet.mac_tables(self.size)
        self.step = 0
        self.last_inside: dict[str, Any] | None = None
        self.total_steps = s.pretrain_steps + s.steps

    # -- one step
    def _distill(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad(), self.rt.autocast():
            t = self.teacher(x)
        with self.rt.autocast():
            s = self.supernet(x, tau=self.cfg.search.tau)
        return self.loss_fn(s, t)

    def _weight_step(self, pretrain: bool) -> dict[str, float]:
        """One weight update on the sum of the sandwich draws' losses (AGD): each draw is backpropagated
        on its own, so only one supernet graph is alive at a time; the gradients add up the same."""
        x = self.rt.tensor(self.w_stream.next())
        self.opt_w.zero_grad(set_to_none=True)
        with torch.no_grad(), self.rt.autocast():
            t = self.teacher(x)
        totals: dict[str, float] = {}
        for widths in self.supernet.sandwich_widths(pretrain, self.cfg.search.tau):
            with self.rt.autocast():
                terms = self.loss_fn(self.supernet(x, onehots=widths), t)
            loss = sum(terms.values())
            self._check_finite(loss, "weight")
            loss.backward()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
        self.opt_w.step()
        return {f"w_{k}": v for k, v in totals.items()}

    def _arch_step(self) -> dict[str, float]:
        x = self.rt.tensor(self.a_stream.next())
        weights = self.supernet.weight_parameters()
        for p in weights:
            p.requires_grad_(False)  # first-order: no weight gradients in the architecture step
        try:
            self.opt_a.zero_grad(set_to_none=True)
            terms = self._distill(x)
            emacs = self.supernet.expected_macs(self.tables)
            cost = self.controller.lam * emacs / self.budget_max
            loss = sum(terms.values()) + cost.float()
            self._check_finite(loss, "architecture")
            loss.backward()
            self.opt_a.step()
        finally:
            for p in weights:
                p.requires_grad_(True)
        return {**{f"a_{k}": float(v.detach()) for k, v in terms.items()}, "mac_cost": float(cost.detach())}

    def _check_finite(self, loss: torch.Tensor, what: str) -> None:
        if not torch.isfinite(loss):
            raise CrdError(f"search diverged: non-finite {what} loss at step {self.step + 1}; "
                           f"lower search.lr / search.arch_lr or resume from the last checkpoint")

    def _control(self) -> dict[str, Any]:
        arch = self.supernet.argmax_arch()
        macs = arch_macs(arch, self.size)["total"]
        if self.controller.inside(macs):
            self.last_inside = arch
        lam = self.controller.update(macs)
        return {"argmax_macs": macs, "lambda": lam, "inside": self.controller.inside(macs)}

    # -- run
    def run(self, resume: bool = False) -> SearchResult:
        t0 = time.time()
        last = self._check_run_dir(resume)
        self._setup()
        if last is not None:
            self._restore(last)
        else:
            self._start_fresh()
        s = self.cfg.search
        self.on_progress({"event": "start", "step": self.step, "total": self.total_steps, "warnings": self.warnings,
                          "teacher": self.teacher_source, "loss": self.loss_fn.description,
                          "device": self.rt.describe(), "run_dir": str(self.run_dir),
                          "budget": [self.budget_min, self.budget_max], "size": self.size})
        self.supernet.train()
        interrupted = False
        control: dict[str, Any] = {}
        try:
            while self.step < self.total_steps:
                control = self._advance(control)
                if self.step % s.checkpoint_every == 0 and self.step < self.total_steps:
                    self._save()
        except KeyboardInterrupt:
            interrupted = True
        self._save()
        with torch.no_grad():
            emacs = float(self.supernet.expected_macs(self.tables))
        if interrupted:
            return SearchResult(self.run_dir, None, None, self.log_path, None, None, self.size, self.budget_min,
                                self.budget_max, False, "interrupted", self.step, time.time() - t0,
                                self.controller.lam, emacs, None, self.loss_fn.description, self.warnings, True)
        return self._finish(time.time() - t0, emacs)

    def _advance(self, control: dict[str, Any]) -> dict[str, Any]:
        """One weight step (and, after pretraining, one architecture step), logged and reported; returns the
        budget controller's last reading while it has not been logged yet."""
        s = self.cfg.search
        phase = "pretrain" if self.step < s.pretrain_steps else "search"
        terms = self._weight_step(pretrain=phase == "pretrain")
        if phase == "search":
            terms.update(self._arch_step())
        self.step += 1
        searched = self.step - s.pretrain_steps
        if phase == "search" and (searched % s.control_every == 0 or self.step == self.total_steps):
            control = self._control()
        with torch.no_grad():
            emacs = float(self.supernet.expected_macs(self.tables))
        arch = self.supernet.argmax_arch()
        info = {"event": "step", "step": self.step, "total": self.total_steps, "phase": phase,
                "loss": sum(v for k, v in terms.items() if k.startswith("w_")), "terms": terms,
                "expected_macs": emacs, "argmax_macs": arch_macs(arch, self.size)["total"],
                "lambda": self.controller.lam, "arch": short_arch(arch)}
        if self.step % s.log_every == 0 or self.step == self.total_steps or control:
            self._log({k: v for k, v in info.items() if k != "event"} | control)
            control = {}
        self.on_progress(info)
        return control

    def _finish(self, seconds: float, emacs: float) -> SearchResult:
        from crdtool.models import build_generator
        from crdtool.models.checkpoints import save_generator
        from crdtool.models.searched import arch_spec, save_arch

        arch, derive = self.supernet.argmax_arch(), "argmax"
        if not self.controller.inside(arch_macs(arch, self.size)["total"]):
            if self.last_inside is not None:
                arch, derive = self.last_inside, "last_in_window"
            else:
                arch, moves = repair_to_window(self.supernet, self.size, self.budget_min, self.budget_max)
                derive = "repaired"
                self.warnings.append(f"the argmax network never entered the budget window; {moves} greedy "
                                     f"change(s) moved it (consider more search.steps)")
        macs = arch_macs(arch, self.size)
        inside = self.controller.inside(macs["total"])
        if not inside:
            self.warnings.append(f"derived network ({format_macs(macs['total'])}) is outside the window "
                                 f"[{format_macs(self.budget_min)}, {format_macs(self.budget_max)}]")
        arch = dict(arch)
        arch["meta"] = {"search": self.cfg.name, "size": self.size, "macs": macs["total"], "convention": "literature",
                        "macs_256": arch_macs(arch, 256)["total"], "budget": [self.budget_min, self.budget_max],
                        "derive": derive, "teacher": self.teacher_source, "steps": self.step}
        arch_path = save_arch(arch, self.run_dir / "arch.json")
        model = build_generator(arch_spec(arch))
        inherit_weights(self.supernet.cpu(), model, self.supernet.derived_prefix_map(arch))
        gen_path = save_generator(model, self.run_dir / "generator.safetensors",
                                  {"note": "supernet-inherited weights, not a trained student"})
        params = sum(p.numel() for p in model.parameters())
        result = SearchResult(self.run_dir, arch_path, gen_path, self.log_path, arch, float(macs["total"]), self.size,
                              self.budget_min, self.budget_max, inside, derive, self.step, seconds,
                              self.controller.lam, emacs, params, self.loss_fn.description, self.warnings)
        write_json_atomic(self.run_dir / "search.json", summary_document(result))
        return result


def summary_document(r: SearchResult) -> dict[str, Any]:
    return {"format": SUMMARY_FORMAT, "version": 1, "arch": str(r.arch_path), "macs": r.macs, "size": r.size,
            "budget": [r.budget_min, r.budget_max], "inside": r.inside, "derive": r.derive, "steps": r.steps,
            "seconds": round(r.seconds, 1), "lambda": r.lam, "expected_macs": r.expected_macs, "params": r.params,
            "loss": r.loss_description, "warnings": r.warnings}


def run_search(recipe: str | Path | SearchConfig, budget: float | str | None = None, window: float | None = None,
               resume: bool = False, out: str | Path | None = None, overrides: dict[str, Any] | None = None,
               runtime: Runtime | None = None,
               on_progress: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """Search a generator under ``budget`` MACs (at the recipe's crop size); writes RUN/arch.json."""
    cfg = recipe if isinstance(recipe, SearchConfig) else load_search_recipe(recipe, overrides)
    return Searcher(cfg, budget, window, Path(out) if out is not None else None, runtime, on_progress).run(resume)

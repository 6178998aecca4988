"""SR search recipes: ``task = "sr"`` in a ``crdtool search`` recipe selects ``crdtool.search.sr_space``.

A recipe has ``name``, ``task = "sr"``, ``seed``, ``output_dir``, a ``[data]`` table (where the training HR
images are and how patches are drawn) and a ``[search]`` table (the space, the schedule and the budget).
Input paths are relative to the recipe's folder; ``output_dir`` to the working directory. The run folder
receives ``sr_arch.json``, ``search.jsonl`` (the log) and ``search_recipe.toml`` (what ran).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import Field, field_validator, model_validator

from crdtool.errors import CrdError
from crdtool.fileio import ensure_writable_dir, write_bytes_atomic
from crdtool.models.sr_student import SR_OPS
from crdtool.recipe import RecipeSection, dump_toml, read_toml
from crdtool.search.search import validated
from crdtool.search.space import parse_macs
from crdtool.search.sr_space import SRSearchConfig, run_sr_search

_D = SRSearchConfig  # the defaults of the Python API are the recipe's defaults


def is_sr_search_recipe(data: dict[str, Any]) -> bool:
    """True when a search recipe (as read from TOML) asks for the SR search."""
    return data.get("task") == "sr"


class SRSearchData(RecipeSection):
    """``[data]``: training HR folders (LR by MATLAB bicubic, or ``LR_bicubic/X<scale>/`` beside them)."""

    root: Path
    scale: Literal[2, 3, 4] = _D.scale
    train_sets: list[str] = Field(default_factory=lambda: list(_D.train_sets), min_length=1,
                                  description="HR folders relative to root; weights and architecture use disjoint "
                                              "halves of their images")
    crop_size: int = Field(_D.crop_size, ge=8, description="HR patch side (LR patch = crop_size / scale)")
    batch_size: int = Field(_D.batch_size, ge=1)

    @model_validator(mode="after")
    def _divisible(self):
        if self.crop_size % self.scale:
            raise ValueError(f"crop_size ({self.crop_size}) must be a multiple of scale ({self.scale})")
        return self


class SRSearchSection(RecipeSection):
    """``[search]``: AGD's SR space (operators x widths per cell), the schedule and the MAC ceiling."""

    budget: str | float = Field(f"{_D.budget / 1e9:g}G", description="exact conv MACs at a size x size LR input "
                                                                     "(AGD: 110.9G at 256); --budget overrides")
    size: int = Field(_D.size, ge=8, description="LR side at which the budget is counted")
    num_feat: int = Field(_D.num_feat, ge=1)
    cells: int = Field(_D.cells, ge=1, le=64)
    widths: list[int] = Field(default_factory=lambda: list(_D.widths), min_length=1)
    ops: list[Literal[SR_OPS]] = Field(default_factory=lambda: list(SR_OPS), min_length=1)  # type: ignore[valid-type]
    steps: int = Field(_D.steps, ge=1, description="weight steps; one architecture step every arch_every")
    lr: float = Field(_D.lr, gt=0)
    arch_lr: float = Field(_D.arch_lr, gt=0)
    arch_every: int = Field(_D.arch_every, ge=1)
    lambda_budget: float = Field(_D.lambda_budget, ge=0, description="weight of relu(E[MACs] / budget - 1)")
    tau: float = Field(_D.tau, gt=0, description="Gumbel-softmax temperature of the width choice")
    threads: Optional[int] = Field(None, ge=1, description="torch threads (default: torch's own)")

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if any(w < 1 for w in v):
            raise ValueError("widths must be positive")
        return sorted(set(v))

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: str | float) -> str | float:
        try:
            parse_macs(v)
        except CrdError as e:
            raise ValueError(str(e)) from None
        return v


class SRSearchRecipe(RecipeSection):
    """A ``task = "sr"`` search recipe."""

    name: str
    task: Literal["sr"] = "sr"
    seed: int = 0
    output_dir: Optional[Path] = None
    data: SRSearchData
    search: SRSearchSection = Field(default_factory=SRSearchSection)
    source: Optional[Path] = Field(None, exclude=True)

    @property
    def run_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else Path("runs") / self.name

    def to_config(self, budget: float | str | None = None, out: Path | None = None) -> SRSearchConfig:
        s, d = self.search, self.data
        return SRSearchConfig(data=d.root, train_sets=tuple(d.train_sets), budget=parse_macs(budget or s.budget),
                              size=s.size, scale=d.scale, num_feat=s.num_feat, cells=s.cells, widths=tuple(s.widths),
                              ops=tuple(s.ops), steps=s.steps, batch_size=d.batch_size, crop_size=d.crop_size,
                              lr=s.lr, arch_lr=s.arch_lr, arch_every=s.arch_every, lambda_budget=s.lambda_budget,
                              tau=s.tau, seed=self.seed, threads=s.threads, out_dir=Path(out or self.run_dir))


def parse_sr_search_recipe(data: dict[str, Any], source: str = "<recipe>", base: Path | None = None,
                           overrides: dict[str, Any] | None = None) -> SRSearchRecipe:
    cfg = validated(SRSearchRecipe, data, source, overrides)
    root = cfg.data.root
    cfg.data.root = root if root.is_absolute() else ((base or Path.cwd()) / root).resolve()
    cfg.source = Path(source) if source != "<recipe>" else None
    return cfg


def load_sr_search_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> SRSearchRecipe:
    path = Path(path)
    return parse_sr_search_recipe(read_toml(path, overrides), str(path), path.parent.resolve(), overrides)


@dataclass
class SRSearchResult:
    run_dir: Path
    arch_path: Path
    arch: dict[str, Any]
    macs: int  # the derived network's exact conv MACs at size x size
    size: int
    budget: float
    repaired: int  # cells narrowed after the argmax to fit the budget
    steps: int
    seconds: float
    params: int
    cell_macs: list[int] = field(default_factory=list)


def run_sr_search_recipe(cfg: SRSearchRecipe, budget: float | str | None = None, out: str | Path | None = None,
                         on_progress: Callable[[dict[str, Any]], None] | None = None) -> SRSearchResult:
    """Run the SR search a recipe describes into a fresh folder (``out`` or the recipe's output_dir)."""
    from crdtool.models import build_generator
    from crdtool.models.sr_student import sr_arch_spec, sr_op_macs

    config = cfg.to_config(budget, Path(out) if out is not None else None)
    run_dir = Path(config.out_dir)
    ensure_writable_dir(run_dir)
    if (run_dir / "sr_arch.json").exists():
        raise CrdError(f"{run_dir} already holds an SR search (sr_arch.json); choose another output folder (--out)")
    for sub in config.train_sets:
        if not (Path(config.data) / sub).is_dir():
            raise CrdError(f"training folder not found: {Path(config.data) / sub} (data.root + data.train_sets)")
    dumped = cfg.model_dump(mode="json", exclude_none=True)
    dumped["search"]["budget"] = config.budget
    write_bytes_atomic(run_dir / "search_recipe.toml", dump_toml(dumped).encode())
    t0 = time.time()
    arch = run_sr_search(config, on_progress=on_progress)
    c, cell_macs = arch["num_feat"], []
    for cell in arch["cells"]:
        cell_macs.append(sr_op_macs(cell["op"], c, cell["width"], config.size, config.size))
        c = cell["width"]
    params = sum(p.numel() for p in build_generator(sr_arch_spec(arch)).parameters())
    meta = arch["meta"]
    return SRSearchResult(run_dir, run_dir / "sr_arch.json", arch, int(meta["macs"]), config.size, config.budget,
                          int(meta["repaired"]), config.steps, time.time() - t0, params, cell_macs)

"""TOML recipe -> typed, validated ``Recipe``. Errors are one line naming the file and the key.

Sections: top level (name, task, seed, output_dir), [data], [teacher], [student], [discriminator],
[loss], [train]. Relative paths are resolved against the recipe file's folder, so a recipe works
from any working directory.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crdtool.weights import cache as weights
from crdtool.errors import CrdError
from crdtool.models.registry import GeneratorSpec, family_spec

RECIPE_VERSION = 1


class RecipeSection(BaseModel):
    """Base of every recipe table (distill and search): unknown keys are errors, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(RecipeSection):
    """If set, ``data.root`` is generated with ``crdtool data synth`` when it does not exist yet."""

    kind: Literal["unpaired", "paired"] = "unpaired"
    size: int = Field(64, ge=8)
    count: int = Field(64, ge=4)
    seed: int = 0


class DataConfig(RecipeSection):
    root: Path
    layout: Literal["unaligned", "aligned", "folder"] = "unaligned"
    direction: Literal["AtoB", "BtoA"] = "AtoB"
    test_fraction: float = Field(0.1, gt=0, lt=1, description=(
        "folder layout without a test/ subfolder: the last share of the images (by name) held out for evaluation"))
    load_size: int = Field(286, ge=8)
    crop_size: int = Field(256, ge=8)
    crop_align: int = Field(1, ge=1, description=(
        "training crop offsets in multiples of this; with train.teacher_cache, the generators' total stride (4) "
        "keeps each crop of the teacher's whole-image output on the student's pixel grid"))
    flip: bool = Field(True, description=(
        "random horizontal flips in training (off with a teacher cache: a flip mirrors the teacher's grid texture)"))
    batch_size: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)
    eval_images: int = Field(8, ge=1, description="test images used for periodic fidelity evaluation and grids")
    synth: Optional[SynthConfig] = None
    # task "sr": root holds HR folders (each an HR/ subfolder or the images themselves; LR made by MATLAB
    # bicubic, or read from LR_bicubic/X<scale>/ beside HR); crop_size is the HR training patch side
    scale: Literal[2, 3, 4] = Field(4, description="task sr: upscaling factor")
    train_sets: list[str] = Field(default_factory=lambda: ["train/T91", "train/BSD200"],
                                  description="task sr: training HR folders, relative to root")
    eval_sets: list[str] = Field(default_factory=lambda: ["Set5"], description=(
        "task sr: benchmark sets relative to root; the first is evaluated during training (eval_images images)"))
    max_images: Optional[int] = Field(None, ge=1, description="task sr: train on the first N images only")

    @model_validator(mode="after")
    def _crop_fits(self):
        if self.crop_size > self.load_size:
            raise ValueError(f"crop_size ({self.crop_size}) must be <= load_size ({self.load_size})")
        return self


class GeneratorConfig(RecipeSection):
    """A generator family + width, or ``arch = "path/arch.json"`` for a searched network."""

    arch: str = "resnet"
    ngf: int = Field(64, ge=1)
    n_blocks: int = Field(9, ge=0)
    num_downs: int = Field(8, ge=1)
    norm: Optional[Literal["instance", "batch", "none"]] = None
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    scale: Optional[int] = Field(None, ge=1, description="SR families: upscaling factor (default data.scale)")
    affine: bool = Field(False, description="resnet families: InstanceNorm with a learned scale and shift")
    residual: bool = Field(False, description=(
        "resnet families: output = clamp(input + head, -1, 1) instead of tanh(head); starts as the identity, "
        "for subtle photo->photo teachers"))
    colour_skip: bool = Field(False, description=(
        "with residual: the input skip goes through a per-image 3x3 colour matrix and offset, predicted from "
        "the input's colour statistics and the pooled features (for teachers that grade each photo differently)"))
    skip_filter: bool = Field(False, description=(
        "with colour_skip: the skip first passes a learned 3x3 filter per channel, starting as the identity "
        "(for teachers that soften or sharpen the photo)"))
    checkpoint: Optional[Path] = Field(None, description=(
        "teacher only: load pretrained weights instead of training (a file, or a cached id such as "
        "\"weights:vintagify\")"))
    batchnorm_stats: Literal["batch", "running"] = Field("batch", description=(
        "pretrained teacher with BatchNorm: normalise with each batch's statistics, as the official pix2pix "
        "test.py does without --eval (default), or with the saved running statistics, as with --eval"))

    def spec(self) -> GeneratorSpec:
        if self.arch.endswith(".json"):
            from crdtool.models.sr_student import load_arch_spec  # an SR arch.json or a CycleGAN one

            return load_arch_spec(self.arch)
        return family_spec(self.arch, ngf=self.ngf, n_blocks=self.n_blocks, num_downs=self.num_downs,
                           norm=self.norm, dropout=self.dropout, scale=self.scale, affine=self.affine,
                           residual=self.residual, colour_skip=self.colour_skip, skip_filter=self.skip_filter)


class DiscriminatorConfig(RecipeSection):
    ndf: int = Field(64, ge=1)
    n_layers: int = Field(3, ge=1)
    norm: Literal["instance", "batch", "none"] = "instance"
    gan_mode: Literal["lsgan", "hinge"] = "lsgan"
    student: Literal["frozen", "updated", "none"] = Field(
        "frozen", description="online teacher D in student steps: frozen (paper), also updated, or not used")
    checkpoint: Optional[Path] = Field(None, description=(
        "start D from these weights instead of at random: a crdtool run folder (its last checkpoint's D_A), "
        "a checkpoint folder, a .safetensors state dict or an official latest_net_D*.pth; e.g. the D trained "
        "with a pretrained teacher"))
    sees: Literal["image", "detail"] = Field("image", description=(
        "pretrained teacher: what D judges of an image. detail: the image minus its 1 px Gaussian blur, the "
        "teacher's fine texture alone (crdtool.losses.fine_detail); colours and shapes are left to the other "
        "terms"))
    lr_scale: float = Field(1.0, gt=0, description="D's learning rate as a multiple of train.lr")
    real: Literal["auto", "data", "teacher"] = Field("auto", description=(
        "pretrained teacher: what D learns as real. data: target-domain images (trainB), fake: the teacher's "
        "outputs; teacher: the teacher's outputs, fake: the student's. auto: teacher when the dataset has no "
        "target images (folder layout), else data"))


class LossConfig(RecipeSection):
    kd: Literal["crd", "instance_rkd", "none"] = "crd"
    lambda_crd: float = Field(25.0, ge=0)
    rows: float = Field(1.0, ge=0)
    columns: float = Field(1.0, ge=0)
    patches: float = Field(1.0, ge=0)
    patch_size: int = Field(32, ge=1)
    distance_weight: float = Field(1.0, ge=0)
    angle_weight: float = Field(2.0, ge=0)
    vgg_weights: Optional[Path] = Field(None, description=(
        "VGG file: \"weights:vgg19\" (crdtool weights get vgg19), the Keras .h5, or a torchvision vgg16 state dict; "
        "unset = no perceptual loss"))
    lambda_style: float = Field(1e4, ge=0)
    lambda_feature: float = Field(10.0, ge=0)
    lambda_pixel: float = Field(0.0, ge=0, description=(
        "L1 between student and teacher outputs; not in the paper: a stand-in anchor for colours when the VGG "
        "weights (and so the feature loss) are unavailable"))
    lambda_spectral: float = Field(0.0, ge=0, description=(
        "L1 between the amplitude spectra of student and teacher outputs above loss.spectral_min_freq: the "
        "teacher's fine texture, which a pixel loss averages away (crdtool.losses.SpectralAmplitudeLoss)"))
    spectral_min_freq: float = Field(0.25, ge=0, le=0.5, description="cycles per pixel where that band starts")
    spectral_pool: int = Field(1, ge=1, description=(
        "compare the RMS amplitude of each N x N block of frequency bins, not each bin: the energy of a "
        "grain-like texture, whose per-bin amplitudes are random"))
    lambda_distill: float = Field(0.0, ge=0, description=(
        "MSE between the teacher's inner features and the student's, each mapped to the teacher's width by a "
        "learned 1x1 conv (GAN Compression's distillation); needs a pretrained teacher, and both generators of "
        "the resnet family"))
    distill_blocks: list[int] = Field(default_factory=lambda: [0, 3, 6, 9], min_length=1, description=(
        "where the features are compared: after these residual blocks (0: the encoder's end, before the first)"))
    lambda_hr: float = Field(1.0, ge=0, description="task sr: L1 between the student's output and the HR image")
    lambda_gan: float = Field(1.0, ge=0)
    lambda_cycle: float = Field(10.0, ge=0)
    lambda_identity: float = Field(0.5, ge=0)
    lambda_l1: float = Field(100.0, ge=0)


class TrainConfig(RecipeSection):
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    teacher_epochs: int = Field(100, ge=0, description="epochs at constant lr")
    teacher_epochs_decay: int = Field(100, ge=0, description="epochs of linear decay to 0")
    round_epochs: int = Field(10, ge=1, description="CycleGAN: teacher epochs between student rounds (h2z 10, s2w 6)")
    student_epochs_per_round: int = Field(40, ge=0)
    student_epochs: int = Field(200, ge=0, description="pretrained teacher: total student epochs (half constant, half decay)")
    teacher_select: Literal["last", "fid"] = Field(
        "last", description="CycleGAN online teacher: distil from the last one, or the best by FID so far")
    fid_images: int = Field(100, ge=2, description="test images per domain for the teacher's FID")
    inception_weights: Optional[Path] = Field(None, description=(
        "FID Inception file or \"weights:fid-inception\"; unset = crdtool's default lookup"))
    pool_size: int = Field(50, ge=0)
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many student steps (smoke runs)")
    teacher_cache: Literal["auto", "disk", "memory", "off"] = Field("auto", description=(
        "translate each training image once (whole, at data.load_size) with the frozen teacher and cut the "
        "student's crops from that output. auto = disk (the run folder's teacher_cache/, reused on resume) for "
        "a pretrained teacher on a folder layout, else off; memory: in RAM only, also for an online CycleGAN "
        "teacher, whose outputs are reused through each round's student epochs and dropped when the teacher "
        "changes; off: the teacher runs on every crop"))
    eval_every: int = Field(500, ge=1, description="student steps between evaluations")
    checkpoint_every: int = Field(500, ge=1, description="steps (teacher+student) between checkpoints")
    keep_checkpoints: int = Field(1, ge=1)
    ema_decay: float = Field(0.0, ge=0, lt=1, description=(
        "keep an exponential moving average of the student's weights with this decay (0: off, e.g. 0.995); "
        "student.safetensors is then the average, and student-raw.safetensors the last weights"))
    ema_start: float = Field(0.5, ge=0, lt=1, description=(
        "the fraction of the student steps the learning rate is scheduled over after which the average "
        "starts (0.5: with the lr decay of a pretrained teacher's schedule and of task sr)"))
    nonfinite: Literal["stop", "skip"] = "stop"
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False
    threads: Optional[int] = Field(None, ge=1, description=(
        "CPU threads for PyTorch's intra-op pool (torch.set_num_threads); unset = PyTorch's default"))


class Recipe(RecipeSection):
    version: int = RECIPE_VERSION
    name: str
    task: Literal["cyclegan", "pix2pix", "sr"] = "cyclegan"
    seed: int = 0
    output_dir: Optional[Path] = None
    data: DataConfig
    teacher: GeneratorConfig = Field(default_factory=GeneratorConfig)
    student: GeneratorConfig = Field(default_factory=lambda: GeneratorConfig(arch="mobile_resnet", ngf=16))
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    source: Optional[Path] = Field(None, exclude=True, description="the file this recipe was read from")

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v > RECIPE_VERSION:
            raise ValueError(f"recipe version {v} is newer than this crdtool understands ({RECIPE_VERSION})")
        return v

    @property
    def run_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else Path("runs") / self.name

    def to_toml(self) -> str:
        """The resolved recipe (absolute paths) as TOML, saved in the run folder for later commands."""
        return dump_toml(self.model_dump(mode="json", exclude_none=True))


def resolve_recipe_path(p: Optional[Path], base: Path, source: str, key: str = "") -> Optional[Path]:
    """A recipe's file value: relative to the recipe's folder; for weight keys (``key`` given), a
    ``"weights:ID"`` names the cached reference file (``crdtool weights get ID``)."""
    if p is None or str(p) == "":
        return None
    if key and str(p).startswith(weights.PREFIX):
        return weights.resolve_reference(str(p), f"{source}: {key}")
    return p if p.is_absolute() else (base / p).resolve()


def _resolve_paths(recipe: Recipe, base: Path, source: str = "<recipe>") -> Recipe:
    def fix(p: Optional[Path], key: str = "") -> Optional[Path]:
        return resolve_recipe_path(p, base, source, key)

    recipe.data.root = fix(recipe.data.root)
    recipe.teacher.checkpoint = fix(recipe.teacher.checkpoint, "teacher.checkpoint")
    recipe.discriminator.checkpoint = fix(recipe.discriminator.checkpoint)
    recipe.loss.vgg_weights = fix(recipe.loss.vgg_weights, "loss.vgg_weights")
    recipe.train.inception_weights = fix(recipe.train.inception_weights, "train.inception_weights")
    for g in (recipe.teacher, recipe.student):
        if g.arch.endswith(".json") and not Path(g.arch).is_absolute():
            g.arch = str((base / g.arch).resolve())
    return recipe


def format_validation_error(err: ValidationError, source: str, overrides: dict[str, Any] | None = None) -> str:
    """pydantic's first error as one line naming the file and the dotted key (shared by every recipe kind);
    a key that came from ``--set`` (``overrides``) is blamed on the command line, not on the file."""
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
    given_by = next((k for k in overrides or {} if loc == k or loc.startswith(k + ".")), None)
    where = source if given_by is None else f"--set {given_by}={overrides[given_by]}"
    if e["type"] == "extra_forbidden":
        msg = f"unknown key '{loc}'"
    elif e["type"] == "missing":
        msg = f"missing required key '{loc}'"
    else:
        given = e.get("input")
        shown = f" (got {given!r})" if not isinstance(given, (dict, list)) else ""
        msg = f"bad value for '{loc}'{shown}: {e['msg'].removeprefix('Value error, ')}"
    more = len(err.errors()) - 1
    return (f"{where}: {msg}" + (f" (recipe {source})" if given_by is not None else "")
            + (f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""))


def parse_recipe(data: dict[str, Any], source: str = "<recipe>", base: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise CrdError(format_validation_error(e, source, overrides)) from None
    recipe.source = Path(source) if source != "<recipe>" else None
    return _resolve_paths(recipe, base or Path.cwd(), source)


def read_toml(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A recipe file as a dict, with dotted-key ``overrides`` applied; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise CrdError(f"recipe not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise CrdError(f"{path}: not valid TOML: {e}") from None
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a TOML recipe; ``overrides`` are dotted keys, e.g. ``{"train.max_steps": 10}``."""
    path = Path(path)
    return parse_recipe(read_toml(path, overrides), str(path), path.parent.resolve(), overrides)


def dump_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer for recipe-shaped data (scalars, strings, one level of tables, inline sub-tables)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'

    top = [f"{k} = {scalar(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [f"\n[{k}]\n" + "\n".join(f"{kk} = {scalar(vv)}" for kk, vv in v.items())
              for k, v in data.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"

"""Generator (and discriminator) weights on disk: crdtool's self-describing safetensors, and official ``.pth`` imports.

A crdtool generator file is a safetensors file whose metadata carries ``format``, ``version`` and
the ``GeneratorSpec`` as JSON, so the network can be rebuilt from the file alone.
Foreign ``.pth`` files (official pytorch-CycleGAN-and-pix2pix ``latest_net_G.pth``, vintagify's
teacher, GAN Compression / OMGD / CRD-code resnets) are plain state dicts; ``detect_layout`` tells
them apart by key names and shapes and maps them onto crdtool's modules (or the architecture is given).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from crdtool.errors import CrdError
from crdtool.fileio import atomic_path
from crdtool.tensorfiles import describe_model, load_state_strict, read_safetensors  # noqa: F401  (re-exported)
from crdtool.models.registry import GeneratorSpec, build_generator

GENERATOR_FORMAT = "crdtool.generator"
FORMAT_VERSION = "1"


def save_generator(model: nn.Module, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write ``model`` (built by ``build_generator``) atomically, with its spec in the metadata."""
    from safetensors.torch import save_file

    spec: GeneratorSpec = getattr(model, "spec")
    meta = {"format": GENERATOR_FORMAT, "version": FORMAT_VERSION, "spec": spec.to_json(), **(extra or {})}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CrdError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CrdError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def clean_official_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Drop keys that old checkpoints carry but today's modules do not have.

    Pre-0.4 PyTorch saved ``running_mean``/``running_var`` for InstanceNorm (pytorch-CycleGAN-and-pix2pix
    strips them the same way); BatchNorm's ``num_batches_tracked`` is absent from old files.
    """
    wanted = model.state_dict()
    out = {}
    for k, v in state.items():
        if k not in wanted and re.search(r"\.(running_mean|running_var|num_batches_tracked)$", k):
            continue
        out[k] = v
    for k, v in wanted.items():
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = v
    return out


@dataclass(frozen=True)
class CheckpointLayout:
    """Which published code wrote a generator file, the crdtool spec it maps to, and how its keys map.

    ``rename`` is ``(old infix, new infix)`` pairs applied to the file's keys to get crdtool's keys.
    """

    source: str  # e.g. "vintagify layout"
    spec: GeneratorSpec
    rename: tuple[tuple[str, str], ...] = ()

    def crdtool_key(self, key: str) -> str:
        for old, new in self.rename:
            key = key.replace(old, new)
        return key

    def describe(self) -> str:
        """'vintagify layout (resnet_9blocks, ngf 64, affine InstanceNorm)'."""
        s = self.spec
        family = f"unet_{2 ** s.num_downs}" if s.name == "unet" else f"{s.name}_{s.n_blocks}blocks"
        norm = {"instance": "InstanceNorm", "batch": "BatchNorm", "none": "no norm"}[s.norm or "instance"]
        return f"{self.source} ({family}, ngf {s.ngf}, {'affine ' if s.affine else ''}{norm})"


_OFFICIAL = "official pytorch-CycleGAN-and-pix2pix layout"
_VINTAGIFY = "vintagify layout"
_DROPOUT = "GAN Compression / OMGD / CRD-code layout"
_MOBILE = "GAN Compression mobile layout"
_BLOCK_KEY = re.compile(r"model\.(\d+)\.(conv_block|block)\.(\d+)\.")


def detect_layout(state: dict[str, torch.Tensor], source: str | Path = "state dict") -> CheckpointLayout:
    """Recognise a plain state dict by its keys and shapes. Known layouts:

    * official pytorch-CycleGAN-and-pix2pix resnet (``model.N.conv_block.{1,5}``) and unet (``model.model.*``);
    * vintagify: resnet with affine InstanceNorm, blocks named ``model.N.block.{1,2,5,6}``;
    * GAN Compression / OMGD / CRD code: a Dropout inside each block, so its second conv is
      ``conv_block.6`` (norm ``conv_block.7``); dropout is a no-op in eval, so crdtool loads it without;
    * GAN Compression mobile resnet (separable convs ``conv_block.1.conv.*``).

    Anything else is a one-line ``CrdError`` naming ``source`` and the first key that fits none.
    """
    if "model.model.0.weight" in state:
        w = state["model.model.0.weight"]
        depth = max(k.count(".model.") for k in state if k.startswith("model.model."))
        norm = "batch" if any(k.endswith("running_mean") for k in state) and any(
            k.endswith(".weight") and state[k].dim() == 1 for k in state) else "instance"
        spec = GeneratorSpec("unet", ngf=w.shape[0], input_nc=w.shape[1], num_downs=depth, norm=norm).resolved()
        return CheckpointLayout(_OFFICIAL, spec)
    if "model.1.weight" not in state or state["model.1.weight"].dim() != 4:
        first = next(iter(state), "(empty)")
        raise CrdError(f"{source}: unknown generator checkpoint layout: first key {first!r} fits none of the known "
                       "resnet/unet layouts (official, vintagify, GAN Compression/OMGD/CRD)")
    w = state["model.1.weight"]
    found = [(int(m.group(1)), m.group(2), int(m.group(3)), k) for k in state if (m := _BLOCK_KEY.match(k))]
    blocks = {b for b, _, _, _ in found}
    containers = {c for _, c, _, _ in found}
    last = max(int(k.split(".")[1]) for k in state if re.match(r"model\.\d+\.weight$", k))
    batch = any(re.match(r"model\.2\.(weight|running_mean)$", k) for k in state) and "model.1.bias" not in state
    norm = "batch" if batch else "instance"
    affine = not batch and "model.2.weight" in state
    common = dict(ngf=w.shape[0], input_nc=w.shape[1], output_nc=state[f"model.{last}.weight"].shape[0],
                  n_blocks=len(blocks), norm=norm)
    if any(".conv_block.1.conv." in k for k in state):
        return CheckpointLayout(_MOBILE, GeneratorSpec("mobile_resnet", affine=affine, **common).resolved())
    spec = GeneratorSpec("resnet", affine=affine, **common).resolved()
    if containers == {"block"}:
        return CheckpointLayout(_VINTAGIFY, spec, ((".block.", ".conv_block."),))
    conv_indices = {i for _, _, i, k in found if k.endswith(".weight") and state[k].dim() == 4}
    if 6 in conv_indices and 5 not in conv_indices:
        return CheckpointLayout(_DROPOUT, spec,
                                ((".conv_block.6.", ".conv_block.5."), (".conv_block.7.", ".conv_block.6.")))
    return CheckpointLayout(_OFFICIAL, spec)


def infer_official_spec(state: dict[str, torch.Tensor]) -> GeneratorSpec:
    """Guess resnet/unet, ngf, depth and norm from an official state dict's keys and shapes."""
    return detect_layout(state).spec


def _check_layout_fits(model: nn.Module, state: dict[str, torch.Tensor], layout: CheckpointLayout,
                       path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors under crdtool's names; a key the detected layout cannot place is a one-line error."""
    wanted = model.state_dict()
    renamed = {}
    for key, value in state.items():
        new = layout.crdtool_key(key)
        if new in wanted and tuple(wanted[new].shape) != tuple(value.shape):
            raise CrdError(f"{path}: unknown generator checkpoint layout: key {key!r} has shape "
                           f"{tuple(value.shape)}, the {layout.describe()} expects {tuple(wanted[new].shape)}")
        renamed[new] = value
    cleaned = clean_official_state_dict(renamed, model)
    for key in state:
        if layout.crdtool_key(key) in cleaned and layout.crdtool_key(key) not in wanted:
            raise CrdError(f"{path}: unknown generator checkpoint layout: key {key!r} fits none of the known "
                           f"layouts (closest: {layout.describe()})")
    return cleaned


def load_generator(path: str | Path, spec: GeneratorSpec | None = None) -> nn.Module:
    """Load a generator from a crdtool ``.safetensors``, a run folder, or a foreign ``.pth`` (see ``detect_layout``).

    ``spec`` overrides what the file says or what is inferred; a mismatch is a one-line ``CrdError``.
    The returned module's ``checkpoint_layout`` says what the file was, for the CLI to print.
    """
    path = resolve_generator_path(path)
    if path.suffix == ".safetensors":
        state, meta = read_safetensors(path)
        if spec is None:
            if meta.get("format") != GENERATOR_FORMAT:
                what = meta.get("format", "no crdtool metadata")
                raise CrdError(f"{path} is not a crdtool generator ({what}); pass the architecture explicitly")
            spec = GeneratorSpec.from_dict(json.loads(meta["spec"]))
        model = build_generator(spec, init=False)
        load_state_strict(model, clean_official_state_dict(state, model), path)
        model.checkpoint_layout = _describe_crdtool_file(model.spec, meta)  # type: ignore[attr-defined]
        return model.eval()
    state = read_torch_state_dict(path)
    try:
        layout = detect_layout(state, path)
    except CrdError:
        if spec is None:
            raise
        layout = CheckpointLayout("given architecture", spec.resolved())  # keys as they are; the spec decides
    if spec is not None:
        layout = dataclasses.replace(layout, spec=spec.resolved())
        model = build_generator(layout.spec, init=False)
        renamed = clean_official_state_dict({layout.crdtool_key(k): v for k, v in state.items()}, model)
    else:
        model = build_generator(layout.spec, init=False)
        renamed = _check_layout_fits(model, state, layout, path)
    load_state_strict(model, renamed, path)
    model.checkpoint_layout = layout.describe()  # type: ignore[attr-defined]
    return model.eval()


def resolve_generator_path(path: str | Path) -> Path:
    """A run folder means its student; otherwise the file itself, which must exist."""
    path = Path(path)
    if path.is_dir():
        for name in ("student.safetensors", "generator.safetensors"):
            if (path / name).is_file():
                return path / name
        raise CrdError(f"{path} is a folder without student.safetensors (is it a crdtool run folder?)")
    if not path.is_file():
        raise CrdError(f"checkpoint not found: {path}")
    return path


def _describe_crdtool_file(spec: GeneratorSpec, meta: dict[str, str]) -> str:
    """'crdtool generator file (resnet ngf64 affine), converted from the vintagify layout (...) in vintagify==0.1.2'."""
    text = f"crdtool generator file ({spec.describe()})"
    if meta.get("source_layout"):  # written by crdtool weights get
        text += f", converted from the {meta['source_layout']}"
        if meta.get("source"):
            text += f" in {meta['source'].split(':', 1)[0]}"
    return text


def checkpoint_layout(path: str | Path) -> str:
    """What a generator file is, in one phrase, without building the network (for the CLI to print)."""
    path = resolve_generator_path(path)
    if path.suffix == ".safetensors":
        _, meta = read_safetensors(path)
        if meta.get("format") == GENERATOR_FORMAT:
            return _describe_crdtool_file(GeneratorSpec.from_dict(json.loads(meta["spec"])), meta)
        return f"safetensors file ({meta.get('format', 'no crdtool metadata')})"
    return detect_layout(read_torch_state_dict(path), path).describe()

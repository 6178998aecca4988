"""Generator (and discriminator) weights on disk: crdtool's self-describing safetensors, and official ``.pth`` imports.

A crdtool generator file is a safetensors file whose metadata carries ``format``, ``version`` and
the ``GeneratorSpec`` as JSON, so the network can be rebuilt from the file alone.
Official pytorch-CycleGAN-and-pix2pix files (``latest_net_G.pth``) are plain state dicts; their
architecture is inferred from key names and shapes, or given explicitly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn

from crdtool.errors import CrdError
from crdtool.fileio import atomic_path
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


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt headers/truncation
        raise CrdError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    return tensors, meta


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


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load or raise one line naming the first mismatching key and its shapes."""
    wanted = model.state_dict()
    for k, v in wanted.items():
        if k not in state:
            raise CrdError(f"{source} does not fit {_describe(model)}: missing key {k!r} (expected shape {tuple(v.shape)})")
        if tuple(state[k].shape) != tuple(v.shape):
            raise CrdError(f"{source} does not fit {_describe(model)}: key {k!r} has shape {tuple(state[k].shape)}, "
                           f"expected {tuple(v.shape)}")
    extra = [k for k in state if k not in wanted]
    if extra:
        raise CrdError(f"{source} does not fit {_describe(model)}: unexpected key {extra[0]!r}")
    model.load_state_dict(state, strict=True)


def _describe(model: nn.Module) -> str:
    spec = getattr(model, "spec", None)
    return spec.describe() if spec is not None else type(model).__name__


def infer_official_spec(state: dict[str, torch.Tensor]) -> GeneratorSpec:
    """Guess resnet/unet, ngf, depth and norm from an official state dict's keys and shapes."""
    if "model.model.0.weight" in state:
        w = state["model.model.0.weight"]
        depth = 1 + max(k.count(".model.") for k in state if k.startswith("model.model.")) - 1
        norm = "batch" if any(k.endswith("running_mean") for k in state) and any(
            k.endswith(".weight") and state[k].dim() == 1 for k in state) else "instance"
        return GeneratorSpec("unet", ngf=w.shape[0], input_nc=w.shape[1], num_downs=depth, norm=norm).resolved()
    if "model.1.weight" in state:
        w = state["model.1.weight"]
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.conv_block\.", k))}
        sep = any(".conv_block.1.conv." in k for k in state)
        last = max(int(k.split(".")[1]) for k in state if re.match(r"model\.\d+\.weight$", k))
        norm = "batch" if any(re.match(r"model\.2\.(weight|running_mean)$", k) for k in state) and \
            "model.1.bias" not in state else "instance"
        return GeneratorSpec("mobile_resnet" if sep else "resnet", ngf=w.shape[0], input_nc=w.shape[1],
                             output_nc=state[f"model.{last}.weight"].shape[0], n_blocks=len(blocks), norm=norm).resolved()
    raise CrdError("state dict does not look like a resnet or unet generator (no 'model.1.weight' or 'model.model.0.weight')")


def load_generator(path: str | Path, spec: GeneratorSpec | None = None) -> nn.Module:
    """Load a generator from a crdtool ``.safetensors``, a run folder, or an official ``.pth``.

    ``spec`` overrides what the file says or what is inferred; a mismatch is a one-line ``CrdError``.
    """
    path = resolve_generator_path(path)
    if path.suffix == ".safetensors":
        state, meta = read_safetensors(path)
        if spec is None:
            if meta.get("format") != GENERATOR_FORMAT:
                what = meta.get("format", "no crdtool metadata")
                raise CrdError(f"{path} is not a crdtool generator ({what}); pass the architecture explicitly")
            spec = GeneratorSpec.from_dict(json.loads(meta["spec"]))
    else:
        state = read_torch_state_dict(path)
        if spec is None:
            spec = infer_official_spec(state)
    model = build_generator(spec, init=False)
    load_state_strict(model, clean_official_state_dict(state, model), path)
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


def load_discriminator_weights(model: nn.Module, path: str | Path, prefix: str = "D_A") -> Path:
    """Load a discriminator's weights in place from a run folder, a checkpoint folder or a weights file.

    A run folder means its latest checkpoint; in a checkpoint (``weights.safetensors``) the weights are
    the ones under ``prefix`` ("D_A": the A->B teacher's D). A ``.safetensors`` file may hold them with
    or without that prefix; any other file is read as an official ``latest_net_D*.pth`` state dict.
    Returns the file read. A file that does not fit ``model`` is a one-line ``CrdError``.
    """
    from crdtool.train import state as ckpt

    path = Path(path)
    source = path
    if path.is_dir():
        folder = ckpt.latest_checkpoint(path) or path
        source = folder / "weights.safetensors"
        if not source.is_file():
            raise CrdError(f"{path} is neither a crdtool run folder with a checkpoint nor a checkpoint folder")
    elif not path.is_file():
        raise CrdError(f"discriminator checkpoint not found: {path}")
    if source.suffix == ".safetensors":
        state, _ = read_safetensors(source)
        if any(k.startswith(prefix + ".") for k in state):  # a checkpoint's weights file, or one saved like it
            ckpt.load_module_weights(prefix, model, ckpt.Snapshot(weights=state), source)
            return source
        if path.is_dir():
            raise CrdError(f"{source} holds no {prefix} weights (was that run's discriminator disabled?)")
    else:
        state = clean_official_state_dict(read_torch_state_dict(source), model)
    load_state_strict(model, state, source)
    return source

"""Reading tensor files and loading state dicts strictly: the one low-level home that model checkpoints
(``models.checkpoints``) and training checkpoints (``train.state``) both import, so neither imports the other."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from crdtool.errors import CrdError


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt headers/truncation
        raise CrdError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    return tensors, meta


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load or raise one line naming the first mismatching key and its shapes."""
    wanted = model.state_dict()
    for k, v in wanted.items():
        if k not in state:
            raise CrdError(f"{source} does not fit {describe_model(model)}: missing key {k!r} (expected shape {tuple(v.shape)})")
        if tuple(state[k].shape) != tuple(v.shape):
            raise CrdError(f"{source} does not fit {describe_model(model)}: key {k!r} has shape {tuple(state[k].shape)}, "
                           f"expected {tuple(v.shape)}")
    extra = [k for k in state if k not in wanted]
    if extra:
        raise CrdError(f"{source} does not fit {describe_model(model)}: unexpected key {extra[0]!r}")
    model.load_state_dict(state, strict=True)


def describe_model(model: nn.Module) -> str:
    """The spec's one-line description when the model carries one (crdtool generators), else its class."""
    spec = getattr(model, "spec", None)
    return spec.describe() if spec is not None else type(model).__name__

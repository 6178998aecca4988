"""Checkpoints: safetensors for tensors, JSON for everything else, committed atomically.

Layout inside a run folder::

    checkpoints/step-00001234/weights.safetensors   model weights, prefixed ("student.", "G_A.", ...)
    checkpoints/step-00001234/optim.safetensors     optimizer tensors, image pools, RNG states
    checkpoints/step-00001234/state.json            counters, optimizer param groups, fingerprint
    checkpoints/latest.json                         {"dir": "step-00001234"}  <- the commit point

A checkpoint folder is written completely (each file fsynced) before ``latest.json`` is atomically
replaced to point at it, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crdtool.errors import CrdError
from crdtool.fileio import atomic_path, write_json_atomic
from crdtool.tensorfiles import load_state_strict, read_safetensors

STATE_VERSION = 1


@dataclass
class Snapshot:
    """What a checkpoint holds, split by storage: tensors vs JSON-able values."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


def pack_optimizer(name: str, opt: torch.optim.Optimizer, snap: Snapshot) -> None:
    sd = opt.state_dict()
    meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                snap.tensors[f"optim.{name}.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["state"][str(idx)][k] = v
    snap.state.setdefault("optimizers", {})[name] = meta


def unpack_optimizer(name: str, opt: torch.optim.Optimizer, snap: Snapshot) -> None:
    meta = snap.state["optimizers"][name]
    state: dict[int, dict[str, Any]] = {}
    for idx, scalars in meta["state"].items():
        state[int(idx)] = dict(scalars)
    prefix = f"optim.{name}."
    for key, t in snap.tensors.items():
        if key.startswith(prefix):
            idx, k = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[k] = t
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def capture_rng(snap: Snapshot) -> None:
    snap.tensors["rng.torch"] = torch.get_rng_state()
    snap.state["rng"] = {"python": _jsonable_random_state(random.getstate()),
                         "numpy": _jsonable_numpy_state(np.random.get_state())}


def restore_rng(snap: Snapshot) -> None:
    torch.set_rng_state(snap.tensors["rng.torch"])
    r = snap.state["rng"]
    random.setstate((r["python"][0], tuple(r["python"][1]), r["python"][2]))
    np.random.set_state((r["numpy"][0], np.array(r["numpy"][1], dtype=np.uint32), *r["numpy"][2:]))


def _jsonable_random_state(s):
    return [s[0], list(s[1]), s[2]]


def _jsonable_numpy_state(s):
    return [s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])]


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": "crdtool.checkpoint", "version": str(STATE_VERSION)})


def save_checkpoint(run_dir: Path, step: int, snap: Snapshot, keep: int = 1) -> Path:
    """Write ``snap`` as checkpoint ``step`` and make it the latest; prune older ones beyond ``keep``."""
    root = Path(run_dir) / "checkpoints"
    name = f"step-{step:08d}"
    target = root / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    _save_tensors(snap.weights, target / "weights.safetensors")
    _save_tensors(snap.tensors, target / "optim.safetensors")
    write_json_atomic(target / "state.json", {"version": STATE_VERSION, **snap.state})
    _fsync_dir(target)
    write_json_atomic(root / "latest.json", {"version": STATE_VERSION, "dir": name, "step": step})
    _prune(root, keep_latest=name, keep=keep)
    return target


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _prune(root: Path, keep_latest: str, keep: int) -> None:
    dirs = sorted(p for p in root.glob("step-*") if p.is_dir())
    complete = [p for p in dirs if p.name <= keep_latest]
    stale = [p for p in dirs if p.name > keep_latest]  # half-written leftovers of a killed save
    for p in complete[:-keep] + stale:
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["dir"]
    except (ValueError, KeyError) as e:
        raise CrdError(f"{pointer} is corrupt ({e}); remove it to start over") from None
    path = pointer.parent / name
    if not path.is_dir():
        raise CrdError(f"{pointer} names {name}, which does not exist")
    return path


def load_checkpoint(path: Path) -> Snapshot:
    weights, _ = read_safetensors(path / "weights.safetensors")
    tensors, _ = read_safetensors(path / "optim.safetensors")
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise CrdError(f"cannot read {path / 'state.json'}: {e}") from None
    if state.get("version", 0) > STATE_VERSION:
        raise CrdError(f"{path} was written by a newer crdtool (state version {state['version']})")
    return Snapshot(weights, tensors, state)


def module_weights(prefix: str, module: torch.nn.Module, snap: Snapshot) -> None:
    for k, v in module.state_dict().items():
        snap.weights[f"{prefix}.{k}"] = v


def load_module_weights(prefix: str, module: torch.nn.Module, snap: Snapshot, source: Path) -> None:
    p = prefix + "."
    state = {k[len(p):]: v for k, v in snap.weights.items() if k.startswith(p)}
    load_state_strict(module, state, f"{source} ({prefix})")


def pack_scalers(states: dict[str, dict[str, Any]], snap: Snapshot) -> None:
    """fp16 GradScaler states (scale, growth tracker) per optimizer: a resume continues the same scale."""
    if states:
        snap.state["grad_scalers"] = {name: dict(st) for name, st in states.items()}


def unpack_scalers(snap: Snapshot) -> dict[str, dict[str, Any]]:
    return snap.state.get("grad_scalers", {})


def load_discriminator_weights(model: torch.nn.Module, path: str | Path, prefix: str = "D_A") -> Path:
    """Load a discriminator's weights in place from a run folder, a checkpoint folder or a weights file.

    A run folder means its latest checkpoint; in a checkpoint (``weights.safetensors``) the weights are
    the ones under ``prefix`` ("D_A": the A->B teacher's D). A ``.safetensors`` file may hold them with
    or without that prefix; any other file is read as an official ``latest_net_D*.pth`` state dict.
    Returns the file read. A file that does not fit ``model`` is a one-line ``CrdError``.
    """
    from crdtool.models.checkpoints import clean_official_state_dict, read_torch_state_dict

    path = Path(path)
    source = path
    if path.is_dir():
        folder = latest_checkpoint(path) or path
        source = folder / "weights.safetensors"
        if not source.is_file():
            raise CrdError(f"{path} is neither a crdtool run folder with a checkpoint nor a checkpoint folder")
    elif not path.is_file():
        raise CrdError(f"discriminator checkpoint not found: {path}")
    if source.suffix == ".safetensors":
        state, _ = read_safetensors(source)
        if any(k.startswith(prefix + ".") for k in state):  # a checkpoint's weights file, or one saved like it
            load_module_weights(prefix, model, Snapshot(weights=state), source)
            return source
        if path.is_dir():
            raise CrdError(f"{source} holds no {prefix} weights (was that run's discriminator disabled?)")
    else:
        state = clean_official_state_dict(read_torch_state_dict(source), model)
    load_state_strict(model, state, source)
    return source

"""Export of a super-resolution generator: one fp32 ONNX graph with symbolic batch, height and width.

SR models run on whatever frame arrives (a 320x180 video frame, a 256x256 tile), so the graph is always
dynamic. Parity with PyTorch is checked at two different LR sizes before the file is published; the
manifest records the [0, 1] input/output range and the scale, which differ from the image-to-image
generators' [-1, 1] same-size convention.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from crdtool.deploy.manifest import (MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, library_versions, sha256_file,
                                     write_manifest)
from crdtool.deploy.onnx import check_fp32_parity, export_onnx, verify_onnx
from crdtool.errors import CrdError

SR_FAMILIES = ("rrdb", "sr_resnet", "sr_searched")
PARITY_SIZES: tuple[tuple[int, int], ...] = ((48, 64), (45, 80))  # two LR sizes: one graph must serve both


def load_sr_generator(source: str | Path) -> nn.Module:
    """An SR generator from a crdtool file / run folder, or a Real-ESRGAN / ESRGAN release."""
    from crdtool.models.checkpoints import load_generator
    from crdtool.models.rrdb import load_rrdb

    try:
        model = load_generator(source)
    except CrdError:
        model = load_rrdb(source)
    if getattr(model, "spec", None) is None or model.spec.name not in SR_FAMILIES:
        raise CrdError(f"{source} is not a super-resolution generator ({', '.join(SR_FAMILIES)})")
    return model


def is_sr_source(source: str | Path) -> bool:
    """True when ``source`` loads as an SR generator (export/bench then take the SR path)."""
    try:
        load_sr_generator(source)
    except CrdError:
        return False
    return True


def export_sr(source: str | Path, out_dir: str | Path | None = None, *, images: Sequence[np.ndarray] | None = None,
              stem: str | None = None) -> dict[str, Any]:
    """Write ``<stem>.onnx`` (dynamic N, H, W) and ``manifest.json``; returns the manifest.

    ``images``: uint8 HxWx3 LR images for the parity check (default: seeded noise at ``PARITY_SIZES``).
    """
    source = Path(source)
    model = load_sr_generator(source)
    spec = model.spec
    out = Path(out_dir) if out_dir is not None else (source if source.is_dir() else source.parent) / "export"
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or ("student" if source.is_dir() else source.stem.split(".")[0])
    path = out / f"{stem}.onnx"
    t0 = time.time()
    export_onnx(model, path, (1, 3, *PARITY_SIZES[0]), dynamic=True)
    seconds = time.time() - t0
    if images is None:
        gen = torch.Generator().manual_seed(0)
        inputs = [torch.rand(1, 3, h, w, generator=gen) for h, w in PARITY_SIZES]
    else:
        inputs = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() / 255 for im in images]
    checks = []
    for x in inputs:
        parity = verify_onnx(model, path, x)
        check_fp32_parity(parity, f"{path.name} at {x.shape[2]}x{x.shape[3]}")
        checks.append({"input": list(x.shape), **parity.to_dict()})
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "task": "sr", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {"path": str(source), "kind": "sr", "sha256": sha256_file(model_file(source)),
                   "generator": spec.to_dict()},
        "input": {"name": "input", "shape": ["batch", 3, "height", "width"], "dtype": "float32", "layout": "NCHW",
                  "color": "RGB", "dynamic": True, "stride": 1, "range": [0.0, 1.0], "normalize": "value = pixel / 255"},
        "output": {"name": "output", "dtype": "float32", "layout": "NCHW", "color": "RGB", "range": [0.0, 1.0],
                   "scale": spec.scale, "denormalize": "pixel = clip(round(value * 255), 0, 255)"},
        "artifacts": [{"file": path.name, "kind": "onnx", "precision": "fp32", "seconds": round(seconds, 2)}],
        "verification": {"parity": checks},
        "versions": library_versions(),
    }
    write_manifest(out / MANIFEST_NAME, manifest)
    return manifest


def model_file(source: Path) -> Path:
    from crdtool.models.checkpoints import resolve_generator_path

    return resolve_generator_path(source)

"""``manifest.json``: what a device needs to feed an exported model, and what the export verified.

The standalone runners in ``export/`` read it (without crdtool), so its ``input``/``output`` blocks are the
pre/post-processing contract: RGB, NCHW, float32, value = pixel / 127.5 - 1, bicubic resize to ``size``;
output pixel = round((value + 1) * 127.5) clamped to 0..255.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtool.errors import CrdError
from crdtool.fileio import write_json_atomic
from crdtool.versions import library_versions

MANIFEST_FORMAT = "crdtool.export"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class ArtifactEntry:
    """One file of the export and how close it is to PyTorch."""

    file: str
    kind: str  # onnx-fp32 | onnx-int8-qdq | onnx-fp16 | trt-fp32 | trt-fp16 | trt-int8
    backend: str  # onnxruntime-cpu | tensorrt
    bytes: int = 0
    sha256: str = ""
    parity: dict[str, Any] | None = None
    status: str = "ok"
    notes: dict[str, Any] = field(default_factory=dict)


def build_manifest(*, source: Path, source_kind: str, generator: dict[str, Any], input_shape: tuple[int, ...],
                   dynamic: bool, stride: int, artifacts: list[ArtifactEntry], verification: dict[str, Any],
                   calibration: dict[str, Any] | None) -> dict[str, Any]:
    n, c, h, w = input_shape
    shape: list[Any] = ["batch", c, "height", "width"] if dynamic else [n, c, h, w]
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {"path": str(source), "kind": source_kind, "sha256": sha256_file(source), "generator": generator},
        "input": {"name": "input", "shape": shape, "dtype": "float32", "layout": "NCHW", "color": "RGB",
                  "size": [h, w], "stride": stride, "dynamic": dynamic, "range": [-1.0, 1.0],
                  "normalize": "value = pixel / 127.5 - 1", "resize": "bicubic"},
        "output": {"name": "output", "dtype": "float32", "layout": "NCHW", "color": "RGB", "range": [-1.0, 1.0],
                   "denormalize": "pixel = clip(round((value + 1) * 127.5), 0, 255)"},
        "artifacts": [vars(a) for a in artifacts],
        "verification": verification,
        "calibration": calibration,
        "versions": library_versions(),
    }


def carry_over(out_dir: Path, manifest: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Add to ``manifest`` the artifacts an earlier export left in ``out_dir`` that this one did not rebuild.

    An export adds to or replaces only what it was asked for, so older files stay, listed as before. One
    built from another source checkpoint or for another input shape is kept but marked ``stale`` (with the
    reason), never deleted. Returns (kept file names, {stale file: reason}).
    """
    old_path = out_dir / MANIFEST_NAME
    try:
        old = json.loads(old_path.read_text()) if old_path.is_file() else None
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or not isinstance(old.get("artifacts"), list):
        return [], {}
    rebuilt = {a["file"] for a in manifest["artifacts"]} | {a["kind"] for a in manifest["artifacts"]}
    old_sha = (old.get("source") or {}).get("sha256") if isinstance(old.get("source"), dict) else None
    old_shape = (old.get("input") or {}).get("shape") if isinstance(old.get("input"), dict) else None
    kept, stale = [], {}
    for entry in old["artifacts"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            continue
        name = entry["file"]
        if name in rebuilt or entry.get("kind") in rebuilt or Path(name).name != name or not (out_dir / name).is_file():
            continue
        entry = dict(entry)
        reason = entry.get("stale")
        if old_sha != manifest["source"]["sha256"]:
            reason = (f"built from another source checkpoint (sha256 {str(old_sha)[:12]}, "
                      f"now {manifest['source']['sha256'][:12]})")
        elif old_shape != manifest["input"]["shape"]:
            reason = f"built for input {old_shape}, this export's input is {manifest['input']['shape']}"
        if reason:
            entry["stale"] = reason
            entry.setdefault("input_shape", old_shape)
            stale[name] = reason
        manifest["artifacts"].append(entry)
        kept.append(name)
    return kept, stale


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> Path:
    write_json_atomic(path, manifest)
    return Path(path)


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CrdError(f"cannot read export manifest {path}: {e}") from e
    if data.get("format") != MANIFEST_FORMAT:
        raise CrdError(f"{path} is not a crdtool export manifest")
    if int(data.get("version", 0)) > MANIFEST_VERSION:
        raise CrdError(f"{path} has manifest version {data['version']}, newer than this crdtool ({MANIFEST_VERSION})")
    return data

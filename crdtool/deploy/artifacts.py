"""What every export shares: the staging folder, and the record of each artifact built in it.

Artifacts are built in a hidden staging folder inside the output folder and moved into place (manifest last)
only once every requested one has been verified, so a failed export leaves the output folder as it was.
``ArtifactLog`` keeps one parity-table row per artifact and a manifest entry per published file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from crdtool.deploy.edge import EDGE_KIND_BACKEND
from crdtool.deploy.manifest import MANIFEST_NAME, ArtifactEntry, sha256_file
from crdtool.errors import CrdError
from crdtool.fileio import ensure_writable_dir

KIND_BACKEND = {"onnx-fp32": "onnxruntime-cpu", "onnx-int8-qdq": "onnxruntime-cpu", "onnx-fp16": "onnxruntime-cpu",
                "trt-fp32": "tensorrt", "trt-fp16": "tensorrt", "trt-int8": "tensorrt", **EDGE_KIND_BACKEND}


class ParityLike(Protocol):
    """``deploy.onnx.Parity`` (image-to-image) or ``metrics.sr.SRParity`` (PSNR-Y of an SR output)."""

    max_abs: float
    psnr_db: float
    n_images: int

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class ExportRow:
    """One line of the parity table."""

    artifact: str
    kind: str
    backend: str
    parity: ParityLike | None
    bytes: int
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "kind": self.kind, "backend": self.backend, "bytes": self.bytes,
                "status": self.status, "parity": None if self.parity is None else self.parity.to_dict()}


@dataclass
class ArtifactLog:
    """Rows of the parity table, manifest entries and the published file per kind, as artifacts are built.

    A reduced-precision artifact whose PSNR against PyTorch is below ``low_psnr_db`` is flagged, not refused.
    """

    low_psnr_db: float
    rows: list[ExportRow] = field(default_factory=list)
    entries: list[ArtifactEntry] = field(default_factory=list)
    published: dict[str, str] = field(default_factory=dict)  # kind -> file name
    companions: list[str] = field(default_factory=list)  # files published with an artifact (weights)

    def record(self, kind: str, path: Path, parity: ParityLike | None, keep: bool, status: str = "ok",
               extra: dict[str, Any] | None = None) -> None:
        reduced = not kind.endswith("fp32")
        if status == "ok" and parity is not None and reduced and parity.psnr_db < self.low_psnr_db:
            status = f"low PSNR (< {self.low_psnr_db:g} dB)"
        size_b = path.stat().st_size if path.is_file() else 0
        shown = "ok (intermediate, not kept)" if status == "ok" and not keep else status
        self.rows.append(ExportRow(path.name, kind, KIND_BACKEND[kind], parity, size_b, shown))
        if keep:
            self.published[kind] = path.name
            self.entries.append(ArtifactEntry(path.name, kind, KIND_BACKEND[kind], size_b, sha256_file(path),
                                              None if parity is None else parity.to_dict(), status, extra or {}))

    def files(self) -> list[str]:
        return list(self.published.values()) + self.companions


class Staging:
    """``with Staging(out_dir) as stage:`` build into ``stage.path``, then ``stage.publish(files)``.

    On leaving, the staging folder is removed; after an error, an output folder this export created is
    removed too when it is still empty.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.created = not self.out_dir.exists()
        ensure_writable_dir(self.out_dir)
        try:
            self.path = Path(tempfile.mkdtemp(prefix=".export-staging-", dir=self.out_dir))
        except OSError as e:
            raise CrdError(f"output folder {self.out_dir} is not writable: {e.strerror or e}") from e

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        shutil.rmtree(self.path, ignore_errors=True)
        if exc_type is not None and self.created and self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()
        return False

    def publish(self, files: list[str]) -> None:
        """Move verified files into the output folder (manifest last). Nothing else there is touched: files of
        earlier exports stay, and the new manifest lists them (``manifest.carry_over``)."""
        mode = _file_mode()
        for name in [f for f in files if f != MANIFEST_NAME] + [MANIFEST_NAME]:
            os.chmod(self.path / name, mode)  # temp files are created 0600; artifacts are meant to be copied around
            os.replace(self.path / name, self.out_dir / name)


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask

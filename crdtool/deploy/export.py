"""``export_artifacts``: checkpoint or run folder -> verified ONNX / INT8 / FP16 / TensorRT files + manifest.

Everything is built in a hidden staging folder inside the output folder and moved into place only once every
requested artifact has been verified, so a failed export (bad checkpoint, parity failure, full disk) leaves
the output folder as it was. An export adds to or replaces only what it was asked for: files of earlier exports
stay, listed in the new manifest, and marked stale when their source checkpoint or input shape has changed.
An fp32 artifact that differs from PyTorch is refused; reduced-precision ones are measured (PSNR against the
PyTorch fp32 output) and flagged when low.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from crdtool.data.images import iter_readable, list_images, load_folder_tensor, to_tensor
from crdtool.data.splits import aligned_half, find_test_split, source_side
from crdtool.data.synth import smooth_noise_images
from crdtool.deploy import onnx as onnx_mod
from crdtool.deploy import optimize, quantize, tensorrt
from crdtool.deploy.edge import EDGE_KIND_BACKEND, build_edge_artifacts
from crdtool.deploy.manifest import MANIFEST_NAME, ArtifactEntry, build_manifest, carry_over, sha256_file, write_manifest
from crdtool.deploy.onnx import Parity
from crdtool.errors import CrdError
from crdtool.fileio import ensure_writable_dir
from crdtool.models.checkpoints import load_generator, resolve_generator_path
from crdtool.models.registry import generator_stride

DEFAULT_SIZE = 256
VERIFY_IMAGES = 8
LOW_PSNR_DB = 25.0  # reduced-precision artifacts below this are flagged (not refused)
KIND_BACKEND = {"onnx-fp32": "onnxruntime-cpu", "onnx-int8-qdq": "onnxruntime-cpu", "onnx-fp16": "onnxruntime-cpu",
                "trt-fp32": "tensorrt", "trt-fp16": "tensorrt", "trt-int8": "tensorrt", **EDGE_KIND_BACKEND}


@dataclass
class ExportRow:
    """One line of the parity table."""

    artifact: str
    kind: str
    backend: str
    parity: Parity | None
    bytes: int
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "kind": self.kind, "backend": self.backend, "bytes": self.bytes,
                "status": self.status, "parity": None if self.parity is None else self.parity.to_dict()}


@dataclass
class ExportResult:
    source: Path
    out_dir: Path
    manifest: Path
    input_shape: tuple[int, int, int, int]
    artifacts: dict[str, Path]  # kind -> published file
    rows: list[ExportRow]
    verification: str  # where the verification images came from
    synthetic: bool  # True when no real images were available
    calibration: str | None = None
    dynamic: bool = False
    trt_message: str | None = None  # why a requested TensorRT engine was not built
    notes: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # earlier artifacts this export did not rebuild, left in place
    stale: dict[str, str] = field(default_factory=dict)  # kept file -> why it no longer matches the source

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "out_dir": str(self.out_dir), "manifest": str(self.manifest),
                "input_shape": list(self.input_shape), "artifacts": {k: str(v) for k, v in self.artifacts.items()},
                "rows": [r.to_dict() for r in self.rows], "verification": self.verification,
                "synthetic": self.synthetic, "calibration": self.calibration, "dynamic": self.dynamic,
                "trt_message": self.trt_message,
                "notes": self.notes, "kept": self.kept, "stale": self.stale}


# ------------------------------------------------------------------------------------------ inputs

def input_images(recipe: Any, split: str, n: int | None, size: int) -> tuple[torch.Tensor, Path]:
    """The generator's input domain from a recipe's dataset: (N, 3, size, size) in [-1, 1] and the folder.

    "test": the evaluation split (``data.splits.find_test_split``); "train": root/train{A,B} (unaligned)
    or root/train (aligned A|B files, whose input half is taken).
    """
    data = recipe.data
    root, side = Path(data.root), source_side(data.direction)
    aligned = data.layout == "aligned"
    if data.layout == "folder":  # a plain folder of photos: the dataset's own train / held-out split
        from crdtool.data.folder import folder_split

        files = folder_split(root, "train" if split == "train" else "test", data.test_fraction)[0]
        return load_folder_tensor(root, size, n, files=files), root
    if split == "train":
        folder = root / ("train" if aligned else f"train{side}")
        if not folder.is_dir():
            raise CrdError(f"no train images for the recipe: {folder} does not exist")
    else:
        folder = find_test_split(root, data.direction, data.layout).source
    if not aligned:
        return load_folder_tensor(folder, size, n), folder
    out = [to_tensor(aligned_half(ab, side).resize((size, size), Image.BICUBIC))
           for _, ab in iter_readable(list_images(folder), n)]
    if not out:
        raise CrdError(f"no readable images in {folder}")
    return torch.stack(out), folder


def _load_run_recipe(run_dir: Path | None, notes: list[str]):
    if run_dir is None or not (run_dir / "recipe.toml").is_file():
        return None
    from crdtool.recipe import load_recipe

    try:
        return load_recipe(run_dir / "recipe.toml")
    except CrdError as e:
        notes.append(f"run recipe not usable ({e})")
        return None


def _verification_and_calibration(images: str | Path | torch.Tensor | None, recipe: Any, size: int,
                                  n_verify: int, n_calib: int, need_calib: bool, notes: list[str]):
    """(verify tensor, its source, synthetic?, calib tensor or None, its source)."""
    verify = calib = None
    v_src = c_src = None
    if isinstance(images, torch.Tensor):
        verify, v_src = images[:n_verify].float(), "images passed by the caller"
    elif images is not None:
        verify, v_src = load_folder_tensor(images, size, n_verify), str(images)
    elif recipe is not None:
        try:
            verify, folder = input_images(recipe, "test", n_verify, size)
            v_src = str(folder)
        except CrdError as e:
            notes.append(f"recipe test images unavailable ({e})")
    if need_calib and recipe is not None:
        try:
            calib, folder = input_images(recipe, "train", n_calib, size)
            c_src = str(folder)
        except CrdError as e:
            notes.append(f"recipe training images unavailable ({e})")
    synthetic = verify is None
    if synthetic:
        verify, v_src = smooth_noise_images(n_verify, size), "synthetic (no --images and no recipe dataset)"
        notes.append("verification used SYNTHETIC inputs: pass --images FOLDER for a real check")
    if need_calib and calib is None:
        if isinstance(images, torch.Tensor) or images is not None:
            calib, c_src = (images.float()[:n_calib] if isinstance(images, torch.Tensor)
                            else load_folder_tensor(images, size, n_calib)), f"{v_src} (the verification images)"
        else:
            calib, c_src = smooth_noise_images(n_calib, size, seed=1), "synthetic"
            notes.append("INT8 calibration used SYNTHETIC inputs: its scales may not fit real images")
    return verify, v_src, synthetic, calib, c_src


# ------------------------------------------------------------------------------------------ paths

def default_out_dir(source: str | Path) -> Path:
    source = Path(source)
    if source.is_dir():
        return source / "export"
    return source.with_name(f"{source.stem}-export")


def _publish(staging: Path, out_dir: Path, files: list[str]) -> None:
    """Move verified files into ``out_dir`` (manifest last). Nothing else there is touched: files of earlier
    exports stay, and the new manifest lists them (``manifest.carry_over``)."""
    mode = _file_mode()
    for name in [f for f in files if f != MANIFEST_NAME] + [MANIFEST_NAME]:
        os.chmod(staging / name, mode)  # temp files are created 0600; artifacts are meant to be copied around
        os.replace(staging / name, out_dir / name)


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# ------------------------------------------------------------------------------------------ main

def export_artifacts(source: str | Path, out_dir: str | Path | None = None, *, onnx: bool = True,
                     int8_cpu: bool = False, fp16: bool = False, trt: str | None = None, dynamic: bool = False,
                     size: int | None = None, images: str | Path | torch.Tensor | None = None,
                     calib_images: int = 64, verify_images: int = VERIFY_IMAGES, workspace_gb: float = 2.0,
                     timing_cache: str | Path | None = None, cpu_optimize: bool = True, openvino: bool = False,
                     executorch: bool = False, ncnn: bool = False) -> ExportResult:
    """Export a generator (crdtool file, official .pth, or run folder) and verify every artifact.

    ``trt`` is None or one of "fp32", "fp16", "int8". Raises ``CrdError`` (and writes nothing) when the
    source is unusable, the output folder is not writable, or an fp32 artifact does not match PyTorch.
    When TensorRT or a GPU is missing, the other artifacts are still written and ``trt_message`` says why.
    ``openvino`` / ``executorch`` / ``ncnn`` add the edge runtimes' files (``crdtool.deploy.edge``), with
    their int8 variants when ``int8_cpu`` (OpenVINO, ExecuTorch).
    """
    if trt is not None and trt not in tensorrt.TRT_PRECISIONS:
        raise CrdError(f"unknown TensorRT precision {trt!r}; expected one of {', '.join(tensorrt.TRT_PRECISIONS)}")
    if not (onnx or int8_cpu or fp16 or trt or openvino or executorch or ncnn):
        raise CrdError("nothing to export: choose at least one of --onnx, --int8-cpu, --fp16, --trt, --openvino, "
                       "--executorch, --ncnn")
    if calib_images < 1 or verify_images < 1:
        raise CrdError("--calib-images and the number of verification images must be >= 1")
    src_path = resolve_generator_path(source)
    run_dir = Path(source) if Path(source).is_dir() else None
    model = load_generator(src_path)
    spec = getattr(model, "spec", None)
    if spec is None:
        raise CrdError(f"{src_path} did not load as a crdtool generator")
    stride = generator_stride(model)

    notes: list[str] = []
    recipe = _load_run_recipe(run_dir, notes)
    size = int(size or (recipe.data.crop_size if recipe is not None else DEFAULT_SIZE))
    if size < stride or size % stride:
        raise CrdError(f"--size {size} must be a positive multiple of {stride} for {spec.describe()}")
    shape = (1, 3, size, size)

    want_int8 = int8_cpu or trt == "int8"
    want_fp16 = fp16 or trt == "fp16"
    verify, v_src, synthetic, calib, c_src = _verification_and_calibration(
        images, recipe, size, verify_images, calib_images, want_int8, notes)

    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(source)
    created = not out_dir.exists()
    ensure_writable_dir(out_dir)
    try:
        staging = Path(tempfile.mkdtemp(prefix=".export-staging-", dir=out_dir))
    except OSError as e:
        raise CrdError(f"output folder {out_dir} is not writable: {e.strerror or e}") from e

    stem = src_path.stem
    rows: list[ExportRow] = []
    entries: list[ArtifactEntry] = []
    published: dict[str, str] = {}  # kind -> file name
    trt_message = None
    try:
        reference = onnx_mod.reference_outputs(model, verify)
        graphs: dict[str, Path] = {}

        def record(kind: str, path: Path, parity: Parity | None, keep: bool, status: str = "ok",
                   extra: dict[str, Any] | None = None) -> None:
            reduced = not kind.endswith("fp32")
            if status == "ok" and parity is not None and reduced and parity.psnr_db < LOW_PSNR_DB:
                status = f"low PSNR (< {LOW_PSNR_DB:g} dB)"
            size_b = path.stat().st_size if path.is_file() else 0
            shown = "ok (intermediate, not kept)" if status == "ok" and not keep else status
            rows.append(ExportRow(path.name, kind, KIND_BACKEND[kind], parity, size_b, shown))
            if keep:
                published[kind] = path.name
                entries.append(ArtifactEntry(path.name, kind, KIND_BACKEND[kind], size_b, sha256_file(path),
                                             None if parity is None else parity.to_dict(), status, extra or {}))

        fp32 = onnx_mod.export_onnx(model, staging / f"{stem}.onnx", shape, dynamic=dynamic)
        # The published fp32 graph gets exact CPU rewrites (crdtool.deploy.optimize); INT8/FP16 and TensorRT
        # start from the plain export, whose Pad -> Conv pattern TensorRT fuses and the QDQ pass expects.
        plain = fp32
        if cpu_optimize:
            plain = staging / f".{stem}.plain.onnx"
            shutil.copyfile(fp32, plain)
            optimize.optimize_for_cpu(fp32, fp32)  # exact; the parity gate below checks the result
        parity = onnx_mod.measure_parity(reference, onnx_mod.run_onnx(fp32, verify))
        onnx_mod.check_fp32_parity(parity, f"the ONNX export of {src_path.name}")
        graphs["fp32"] = plain
        record("onnx-fp32", fp32, parity, onnx, extra={
            "opset": onnx_mod.OPSET, "cpu_rewrites": list(optimize.DEFAULT_REWRITES) if cpu_optimize else []})

        if want_int8:
            q = quantize.quantize_int8_qdq(plain, staging / f"{stem}.int8.onnx", calib)
            graphs["int8"] = q
            record("onnx-int8-qdq", q, onnx_mod.measure_parity(reference, onnx_mod.run_onnx(q, verify)), True,
                   extra={"quantized_ops": list(quantize.QUANTIZED_OPS), "symmetric": True,
                          "calibration": "minmax", "calibration_images": int(len(calib))})
        if want_fp16:
            h = quantize.convert_fp16(plain, staging / f"{stem}.fp16.onnx", sample_inputs=verify[:4])
            graphs["fp16"] = h
            record("onnx-fp16", h, onnx_mod.measure_parity(reference, onnx_mod.run_onnx(h, verify)), True,
                   extra={"fp32_ops": sorted(quantize.KEEP_FP32_OPS & _op_types(h)), "io_dtype": "float32"})

        companions: list[str] = []  # weight files published with an edge artifact
        for art in build_edge_artifacts(model, staging, stem, shape, plain_onnx=plain, reference=reference,
                                        verify=verify, calib=calib if int8_cpu else None, openvino=openvino,
                                        executorch=executorch, ncnn=ncnn, dynamic=dynamic,
                                        source_name=src_path.name):
            extra = dict(art.extra)
            if art.companions:
                extra["companion_files"] = {p.name: sha256_file(p) for p in art.companions}
                companions += [p.name for p in art.companions]
            record(art.kind, art.path, art.parity, True, extra=extra)

        if trt is not None:
            trt_message = _build_trt(trt, graphs, staging, stem, shape, dynamic, stride, workspace_gb, timing_cache,
                                     reference, verify, record)

        verification = {"images": v_src, "synthetic": synthetic, "n_images": int(len(verify)),
                        "reference": "PyTorch fp32 on CPU", "fp32_max_abs_limit": onnx_mod.FP32_MAX_ABS,
                        "notes": notes}
        calibration = None if calib is None else {"images": c_src, "n_images": int(len(calib)), "method": "minmax"}
        manifest = build_manifest(source=src_path, source_kind="run" if run_dir else "file",
                                  generator=spec.to_dict(), input_shape=shape, dynamic=dynamic, stride=stride,
                                  artifacts=entries, verification=verification, calibration=calibration)
        if trt_message:
            manifest["tensorrt"] = {"built": False, "reason": trt_message}
        kept, stale = carry_over(out_dir, manifest)
        write_manifest(staging / MANIFEST_NAME, manifest)
        _publish(staging, out_dir, list(published.values()) + companions + [MANIFEST_NAME])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(src_path, out_dir, out_dir / MANIFEST_NAME, shape,
                        {k: out_dir / v for k, v in published.items()}, rows, v_src, synthetic, c_src, dynamic,
                        trt_message, notes, kept, stale)


def _op_types(path: Path) -> set[str]:
    import onnx as onnx_lib

    return {n.op_type for n in onnx_lib.load(str(path), load_external_data=False).graph.node}


def _build_trt(precision: str, graphs: dict[str, Path], staging: Path, stem: str, shape: tuple[int, ...],
               dynamic: bool, stride: int, workspace_gb: float, timing_cache: str | Path | None,
               reference: np.ndarray, verify: torch.Tensor, record) -> str | None:
    """Build and verify one engine; returns a one-line reason instead when TensorRT cannot run here."""
    kind = f"trt-{precision}"
    onnx_in = tensorrt.onnx_for_precision(precision, graphs)
    engine = staging / tensorrt.engine_name(stem, precision)
    probe = tensorrt.probe_tensorrt()
    if not probe.available:
        record(kind, engine, None, False, status=f"skipped: {probe.reason}")
        return probe.reason
    cache = Path(timing_cache) if timing_cache else tensorrt.timing_cache_path(probe.version or "unknown",
                                                                                probe.device or "gpu")
    build = tensorrt.build_engine(onnx_in, engine, profile=tensorrt.profile_shapes(shape, dynamic, stride),
                                  workspace_gb=workspace_gb, timing_cache=cache)
    parity = tensorrt.verify_engine(engine, reference, verify)
    if precision == "fp32" and not parity.max_abs <= tensorrt.TRT_FP32_MAX_ABS:
        raise CrdError(f"the fp32 TensorRT engine does not match PyTorch: max abs error {parity.max_abs:.3g} > "
                       f"{tensorrt.TRT_FP32_MAX_ABS:g}; not writing it")
    record(kind, engine, parity, True, extra={"tensorrt": build.tensorrt_version, "device": probe.device,
                                              "onnx": onnx_in.name, "strongly_typed": build.strongly_typed,
                                              "build_seconds": round(build.seconds, 2),
                                              "workspace_gb": workspace_gb, "dynamic": dynamic})
    return None

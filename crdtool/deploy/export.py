"""``export_artifacts``: checkpoint or run folder -> verified ONNX / INT8 / FP16 / TensorRT files + manifest.

Everything is built in a hidden staging folder inside the output folder and moved into place only once every
requested artifact has been verified, so a failed export (bad checkpoint, parity failure, full disk) leaves
the output folder as it was. An export adds to or replaces only what it was asked for: files of earlier exports
stay, listed in the new manifest, and marked stale when their source checkpoint or input shape has changed.
An fp32 artifact that differs from PyTorch is refused; reduced-precision ones are measured (PSNR against the
PyTorch fp32 output) and flagged when low.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from crdtool.data.images import iter_readable, list_images, load_folder_tensor, to_tensor
from crdtool.data.splits import aligned_half, find_test_split, source_side
from crdtool.data.synth import smooth_noise_images
from crdtool.deploy import onnx as onnx_mod
from crdtool.deploy import optimize, quantize, tensorrt
from crdtool.deploy.artifacts import KIND_BACKEND, ArtifactLog, ExportRow, Staging
from crdtool.deploy.edge import build_edge_artifacts
from crdtool.deploy.manifest import MANIFEST_NAME, build_manifest, carry_over, sha256_file, write_manifest
from crdtool.deploy.onnx import Parity
from crdtool.errors import CrdError
from crdtool.models.checkpoints import load_generator, resolve_generator_path
from crdtool.models.registry import generator_stride

DEFAULT_SIZE = 256
VERIFY_IMAGES = 8
LOW_PSNR_DB = 25.0  # reduced-precision artifacts below this are flagged (not refused)

__all__ = ["KIND_BACKEND", "ExportResult", "ExportRow", "default_out_dir", "export_artifacts", "input_images"]


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


def load_run_recipe(run_dir: Path | None, notes: list[str]):
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
    check_request(trt, calib_images, verify_images, onnx, int8_cpu, fp16, openvino, executorch, ncnn)
    src_path = resolve_generator_path(source)
    run_dir = Path(source) if Path(source).is_dir() else None
    model = load_generator(src_path)
    spec = getattr(model, "spec", None)
    if spec is None:
        raise CrdError(f"{src_path} did not load as a crdtool generator")
    stride = generator_stride(model)

    notes: list[str] = []
    recipe = load_run_recipe(run_dir, notes)
    size = int(size or (recipe.data.crop_size if recipe is not None else DEFAULT_SIZE))
    if size < stride or size % stride:
        raise CrdError(f"--size {size} must be a positive multiple of {stride} for {spec.describe()}")
    shape = (1, 3, size, size)
    want_int8 = int8_cpu or trt == "int8"
    verify, v_src, synthetic, calib, c_src = _verification_and_calibration(
        images, recipe, size, verify_images, calib_images, want_int8, notes)

    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(source)
    with Staging(out_dir) as stage:
        job = _ImageExport(model, src_path, stage.path, shape, dynamic, stride, verify)
        plain = job.onnx_fp32(keep=onnx, cpu_optimize=cpu_optimize)
        job.reduced(plain, calib if want_int8 else None, fp16 or trt == "fp16")
        job.edge(plain, calib if int8_cpu else None, openvino=openvino, executorch=executorch, ncnn=ncnn)
        trt_message = None if trt is None else job.tensorrt(trt, workspace_gb, timing_cache)

        verification = {"images": v_src, "synthetic": synthetic, "n_images": int(len(verify)),
                        "reference": "PyTorch fp32 on CPU", "fp32_max_abs_limit": onnx_mod.FP32_MAX_ABS,
                        "notes": notes}
        calibration = None if calib is None else {"images": c_src, "n_images": int(len(calib)), "method": "minmax"}
        manifest = build_manifest(source=src_path, source_kind="run" if run_dir else "file",
                                  generator=spec.to_dict(), input_shape=shape, dynamic=dynamic, stride=stride,
                                  artifacts=job.log.entries, verification=verification, calibration=calibration)
        kept, stale = finish_manifest(manifest, stage, job.log, trt_message)
    return ExportResult(src_path, out_dir, out_dir / MANIFEST_NAME, shape,
                        {k: out_dir / v for k, v in job.log.published.items()}, job.log.rows, v_src, synthetic,
                        c_src, dynamic, trt_message, notes, kept, stale)


def check_request(trt: str | None, calib_images: int, verify_images: int, *wanted: bool) -> None:
    """One-line errors for an export request that cannot be right, before any work."""
    if trt is not None and trt not in tensorrt.TRT_PRECISIONS:
        raise CrdError(f"unknown TensorRT precision {trt!r}; expected one of {', '.join(tensorrt.TRT_PRECISIONS)}")
    if not (trt or any(wanted)):
        raise CrdError("nothing to export: choose at least one of --onnx, --int8-cpu, --fp16, --trt, --openvino, "
                       "--executorch, --ncnn")
    if calib_images < 1 or verify_images < 1:
        raise CrdError("--calib-images and the number of verification images must be >= 1")


def finish_manifest(manifest: dict[str, Any], stage: Staging, log: ArtifactLog,
                    trt_message: str | None) -> tuple[list[str], dict[str, str]]:
    """Note a TensorRT engine that was not built, list the earlier exports' files, write and publish."""
    if trt_message:
        manifest["tensorrt"] = {"built": False, "reason": trt_message}
    kept, stale = carry_over(stage.out_dir, manifest)
    write_manifest(stage.path / MANIFEST_NAME, manifest)
    stage.publish(log.files() + [MANIFEST_NAME])
    return kept, stale


class _ImageExport:
    """The artifacts of one image-to-image export, built in ``staging`` and verified against PyTorch on ``verify``."""

    def __init__(self, model: torch.nn.Module, src_path: Path, staging: Path, shape: tuple[int, int, int, int],
                 dynamic: bool, stride: int, verify: torch.Tensor):
        self.model, self.src_path, self.staging, self.shape = model, src_path, staging, shape
        self.dynamic, self.stride, self.verify = dynamic, stride, verify
        self.stem = src_path.stem
        self.log = ArtifactLog(LOW_PSNR_DB)
        self.reference = onnx_mod.reference_outputs(model, verify)
        self.graphs: dict[str, Path] = {}  # precision -> the ONNX graph a TensorRT engine starts from

    def _parity(self, outputs: np.ndarray) -> Parity:
        return onnx_mod.measure_parity(self.reference, outputs)

    def onnx_fp32(self, keep: bool, cpu_optimize: bool) -> Path:
        """The verified fp32 graph; returns the plain export (before the CPU rewrites) the others start from."""
        stem = self.stem
        fp32 = onnx_mod.export_onnx(self.model, self.staging / f"{stem}.onnx", self.shape, dynamic=self.dynamic)
        # The published fp32 graph gets exact CPU rewrites (crdtool.deploy.optimize); INT8/FP16 and TensorRT
        # start from the plain export, whose Pad -> Conv pattern TensorRT fuses and the QDQ pass expects.
        plain = fp32
        if cpu_optimize:
            plain = self.staging / f".{stem}.plain.onnx"
            shutil.copyfile(fp32, plain)
            optimize.optimize_for_cpu(fp32, fp32)  # exact; the parity gate below checks the result
        parity = self._parity(onnx_mod.run_onnx(fp32, self.verify))
        onnx_mod.check_fp32_parity(parity, f"the ONNX export of {self.src_path.name}")
        self.graphs["fp32"] = plain
        self.log.record("onnx-fp32", fp32, parity, keep, extra={
            "opset": onnx_mod.OPSET, "cpu_rewrites": list(optimize.DEFAULT_REWRITES) if cpu_optimize else []})
        return plain

    def reduced(self, plain: Path, calib: torch.Tensor | None, fp16: bool) -> None:
        """The INT8 QDQ graph (when ``calib`` is given) and the FP16 graph (when ``fp16``)."""
        if calib is not None:
            q = quantize.quantize_int8_qdq(plain, self.staging / f"{self.stem}.int8.onnx", calib)
            self.graphs["int8"] = q
            self.log.record("onnx-int8-qdq", q, self._parity(onnx_mod.run_onnx(q, self.verify)), True,
                            extra=int8_notes(len(calib)))
        if fp16:
            h = quantize.convert_fp16(plain, self.staging / f"{self.stem}.fp16.onnx", sample_inputs=self.verify[:4])
            self.graphs["fp16"] = h
            self.log.record("onnx-fp16", h, self._parity(onnx_mod.run_onnx(h, self.verify)), True,
                            extra=fp16_notes(h))

    def edge(self, plain: Path, calib: torch.Tensor | None, **runtimes: bool) -> None:
        for art in build_edge_artifacts(self.model, self.staging, self.stem, self.shape, plain_onnx=plain,
                                        reference=self.reference, verify=self.verify, calib=calib,
                                        dynamic=self.dynamic, source_name=self.src_path.name, **runtimes):
            extra = dict(art.extra)
            if art.companions:  # weight files published with an edge artifact
                extra["companion_files"] = {p.name: sha256_file(p) for p in art.companions}
                self.log.companions += [p.name for p in art.companions]
            self.log.record(art.kind, art.path, art.parity, True, extra=extra)

    def tensorrt(self, precision: str, workspace_gb: float, timing_cache: str | Path | None) -> str | None:
        """Build and verify one engine; returns a one-line reason instead when TensorRT cannot run here."""
        profile = tensorrt.profile_shapes(self.shape, self.dynamic, self.stride)
        return build_trt_artifact(precision, self.graphs, self.staging, self.stem, profile, workspace_gb,
                                  timing_cache, self.log, lambda engine: tensorrt.verify_engine(
                                      engine, self.reference, self.verify), {"dynamic": self.dynamic})


def int8_notes(n_calib: int) -> dict[str, Any]:
    return {"quantized_ops": list(quantize.QUANTIZED_OPS), "symmetric": True, "calibration": "minmax",
            "calibration_images": int(n_calib)}


def fp16_notes(path: Path) -> dict[str, Any]:
    return {"fp32_ops": sorted(quantize.KEEP_FP32_OPS & _op_types(path)), "io_dtype": "float32"}


def _op_types(path: Path) -> set[str]:
    import onnx as onnx_lib

    return {n.op_type for n in onnx_lib.load(str(path), load_external_data=False).graph.node}


def build_trt_artifact(precision: str, graphs: dict[str, Path], staging: Path, stem: str,
                       profile: tensorrt.ProfileShapes | None, workspace_gb: float, timing_cache: str | Path | None,
                       log: ArtifactLog, verify: Callable[[Path], Any], notes: dict[str, Any]) -> str | None:
    """Build one engine from the ONNX graph of its precision and verify it (``verify(engine)`` -> parity);
    returns a one-line reason instead when TensorRT cannot run here. Shared by the image and SR exports."""
    kind = f"trt-{precision}"
    onnx_in = tensorrt.onnx_for_precision(precision, graphs)
    engine = staging / tensorrt.engine_name(stem, precision)
    probe = tensorrt.probe_tensorrt()
    if not probe.available:
        log.record(kind, engine, None, False, status=f"skipped: {probe.reason}")
        return probe.reason
    cache = Path(timing_cache) if timing_cache else tensorrt.timing_cache_path(probe.version or "unknown",
                                                                                probe.device or "gpu")
    build = tensorrt.build_engine(onnx_in, engine, profile=profile, workspace_gb=workspace_gb, timing_cache=cache)
    parity = verify(engine)
    if precision == "fp32" and not parity.max_abs <= tensorrt.TRT_FP32_MAX_ABS:
        raise CrdError(f"the fp32 TensorRT engine does not match PyTorch: max abs error {parity.max_abs:.3g} > "
                       f"{tensorrt.TRT_FP32_MAX_ABS:g}; not writing it")
    log.record(kind, engine, parity, True, extra={"tensorrt": build.tensorrt_version, "device": probe.device,
                                                  "onnx": onnx_in.name, "strongly_typed": build.strongly_typed,
                                                  "build_seconds": round(build.seconds, 2),
                                                  "workspace_gb": workspace_gb, **notes})
    return None

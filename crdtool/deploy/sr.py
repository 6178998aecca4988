"""Export of a super-resolution generator: ONNX graphs with symbolic batch, height and width, and their engines.

SR models run on whatever frame arrives (a 320x180 video frame, a 256x256 tile), so every graph is dynamic:

- fp32 (always built; published unless ``onnx=False``): parity with PyTorch is checked at two LR sizes
  (``PARITY_SIZES``) and on the verification images, and an fp32 graph that differs is refused;
- fp16: onnxruntime's float16 converter (``quantize.convert_fp16``), float32 I/O;
- int8: onnxruntime static QDQ (``quantize.quantize_int8_qdq``), calibrated (min/max) on whole LR images;
- TensorRT (``trt`` = fp32 / fp16 / int8): one optimisation profile on the LR input (``tensorrt.sr_profile_shapes``:
  half to twice a typical frame, widened to the verification images); the output is ``scale`` x larger.

Every artifact is compared with PyTorch fp32 on whole LR images by PSNR-Y as SR papers score it
(``metrics.sr.sr_parity``); a reduced-precision one below ``LOW_PSNR_Y_DB`` is flagged, not refused.
Verification LR images: ``images`` (an SR set folder, a folder of LR images, or uint8 arrays), else the run
recipe's first evaluation set; calibration LR images: the run recipe's training sets, else the verification
images; synthetic images only as a last resort, and then the manifest says so. The manifest records the
[0, 1] input/output range and the scale, which differ from the image-to-image generators' [-1, 1] same-size
convention. Files are built in a staging folder and published together, as ``deploy.export`` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from crdtool.deploy import onnx as onnx_mod
from crdtool.deploy import quantize, tensorrt
from crdtool.deploy.artifacts import ArtifactLog, Staging
from crdtool.deploy.manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, library_versions, sha256_file
from crdtool.errors import CrdError
from crdtool.metrics.sr import SRParity, sr_parity

SR_FAMILIES = ("rrdb", "sr_resnet", "sr_searched")
PARITY_SIZES: tuple[tuple[int, int], ...] = ((48, 64), (45, 80))  # two LR sizes: one graph must serve both
FRAME_LR: tuple[int, int] = (180, 320)  # the typical LR input of a TensorRT profile: a 320x180 -> 1280x720 frame
LOW_PSNR_Y_DB = 30.0  # reduced-precision SR artifacts below this PSNR-Y against PyTorch are flagged
VERIFY_IMAGES = 8


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


# ------------------------------------------------------------------------------------------ LR inputs


@dataclass
class SRInputs:
    """uint8 HxWx3 LR images to verify on (and to calibrate on), and where they came from."""

    verify: list[np.ndarray]
    verify_source: str
    synthetic: bool
    calib: list[np.ndarray] | None = None
    calib_source: str | None = None


def lr_images(folder: str | Path, scale: int, n: int) -> list[np.ndarray]:
    """The first ``n`` LR images of an SR set folder (``HR/``, LR from ``LR_bicubic/X<scale>/`` or MATLAB bicubic)
    or of a plain folder of LR images."""
    from crdtool.data.images import list_images
    from crdtool.data.sr import load_eval_set, read_uint8

    folder = Path(folder)
    if (folder / "HR").is_dir() or (folder / "LR_bicubic").is_dir():
        return [p.lr for p in load_eval_set(folder, scale, max_images=n)]
    return [read_uint8(f) for f in list_images(folder)[:n]]


def _given(images: str | Path | Sequence[np.ndarray], scale: int, n: int) -> tuple[list[np.ndarray], str]:
    if isinstance(images, (str, Path)):
        return lr_images(images, scale, n), str(images)
    return [np.asarray(im, np.uint8) for im in images][:n], "images passed by the caller"


def sr_inputs(images: str | Path | Sequence[np.ndarray] | None, recipe: Any, scale: int, n_verify: int,
              n_calib: int, notes: list[str], calib: str | Path | Sequence[np.ndarray] | None = None) -> SRInputs:
    """Verification LR images, and calibration LR images when ``n_calib`` > 0 (``calib`` when given; see the
    module docstring for the defaults)."""
    verify, v_src = None, None
    if images is not None:
        verify, v_src = _given(images, scale, n_verify)
    elif recipe is not None and recipe.data.eval_sets:
        folder = Path(recipe.data.root) / recipe.data.eval_sets[0]
        try:
            verify, v_src = lr_images(folder, scale, n_verify), str(folder)
        except CrdError as e:
            notes.append(f"recipe evaluation images unavailable ({e})")
    synthetic = verify is None
    if synthetic:
        from crdtool.data.synth import smooth_noise_images

        smooth = ((smooth_noise_images(n_verify, 64) + 1) * 127.5).round().clamp(0, 255).byte()
        verify, v_src = list(smooth.permute(0, 2, 3, 1).numpy()), "synthetic (no --images and no recipe dataset)"
        notes.append("verification used SYNTHETIC inputs: pass --images FOLDER (LR images or an SR set) for a "
                     "real check")
    out = SRInputs(verify, v_src, synthetic)
    if n_calib > 0 and calib is not None:
        out.calib, out.calib_source = _given(calib, scale, n_calib)
    elif n_calib > 0:
        out.calib, out.calib_source = _calibration_images(recipe, scale, n_calib, out, notes)
    return out


def _calibration_images(recipe: Any, scale: int, n: int, inputs: SRInputs,
                        notes: list[str]) -> tuple[list[np.ndarray], str]:
    if recipe is not None:
        calib: list[np.ndarray] = []
        folders = [Path(recipe.data.root) / s for s in recipe.data.train_sets]
        try:
            for folder in folders:
                calib += lr_images(folder, scale, n - len(calib))
                if len(calib) >= n:
                    break
            return calib, ", ".join(str(f) for f in folders) + " (LR by MATLAB bicubic)"
        except CrdError as e:
            notes.append(f"recipe training images unavailable ({e})")
    if inputs.synthetic:
        notes.append("INT8 calibration used SYNTHETIC inputs: its scales may not fit real images")
        return inputs.verify[:n], "synthetic"
    return inputs.verify[:n], f"{inputs.verify_source} (the verification images)"


def _tensor(img: np.ndarray) -> torch.Tensor:
    from crdtool.data.sr import to_tensor

    return to_tensor(np.ascontiguousarray(img))[None]


# ------------------------------------------------------------------------------------------ export


class _SRExport:
    """The artifacts of one SR export, built in ``staging`` and compared with PyTorch fp32 on ``verify``."""

    def __init__(self, model: nn.Module, stem: str, staging: Path, verify: list[np.ndarray]):
        self.model, self.stem, self.staging = onnx_mod.cpu_eval_copy(model), stem, staging
        self.scale = int(model.spec.scale)
        self.inputs = [_tensor(im) for im in verify]
        with torch.no_grad():
            self.reference = [self.model(x).numpy() for x in self.inputs]
        self.log = ArtifactLog(LOW_PSNR_Y_DB)
        self.graphs: dict[str, Path] = {}
        self.shape_checks: list[dict[str, Any]] = []

    def parity(self, outputs: list[np.ndarray]) -> SRParity:
        return sr_parity(self.reference, outputs, self.scale)

    def run_onnx(self, path: Path) -> list[np.ndarray]:
        sess = onnx_mod.ort_session(path)
        name = sess.get_inputs()[0].name
        return [sess.run(None, {name: x.numpy()})[0] for x in self.inputs]

    def onnx_fp32(self, keep: bool) -> Path:
        path = self.staging / f"{self.stem}.onnx"
        t0 = time.time()
        onnx_mod.export_onnx(self.model, path, (1, 3, *PARITY_SIZES[0]), dynamic=True)
        seconds = time.time() - t0
        gen = torch.Generator().manual_seed(0)
        for h, w in PARITY_SIZES:  # one graph, two LR sizes
            x = torch.rand(1, 3, h, w, generator=gen)
            check = onnx_mod.verify_onnx(self.model, path, x)
            onnx_mod.check_fp32_parity(check, f"{path.name} at {h}x{w}")
            self.shape_checks.append({"input": list(x.shape), **check.to_dict()})
        parity = self.parity(self.run_onnx(path))
        onnx_mod.check_fp32_parity(parity, f"{path.name} on the verification images")
        self.graphs["fp32"] = path
        self.log.record("onnx-fp32", path, parity, keep, extra={"opset": onnx_mod.OPSET, "seconds": round(seconds, 2)})
        return path

    def reduced(self, fp32: Path, calib: list[np.ndarray] | None, fp16: bool) -> None:
        from crdtool.deploy.export import fp16_notes, int8_notes

        if calib is not None:
            q = quantize.quantize_int8_qdq(fp32, self.staging / f"{self.stem}.int8.onnx",
                                           [_tensor(im) for im in calib])
            self.graphs["int8"] = q
            self.log.record("onnx-int8-qdq", q, self.parity(self.run_onnx(q)), True, extra=int8_notes(len(calib)))
        if fp16:
            h = quantize.convert_fp16(fp32, self.staging / f"{self.stem}.fp16.onnx", sample_inputs=self.inputs[:4])
            self.graphs["fp16"] = h
            self.log.record("onnx-fp16", h, self.parity(self.run_onnx(h)), True, extra=fp16_notes(h))

    def tensorrt(self, precision: str, lr_hw: tuple[int, int], workspace_gb: float,
                 timing_cache: str | Path | None) -> str | None:
        from crdtool.deploy.export import build_trt_artifact

        profile = tensorrt.sr_profile_shapes(lr_hw, [x.shape[2:] for x in self.inputs])
        notes = {"dynamic": True, "scale": self.scale,
                 "profile": {"input": profile.name, "min": list(profile.min), "opt": list(profile.opt),
                             "max": list(profile.max)}}
        return build_trt_artifact(precision, self.graphs, self.staging, self.stem, profile, workspace_gb,
                                  timing_cache, self.log,
                                  lambda engine: self.parity(tensorrt.run_engine_each(engine, self.inputs)), notes)


def export_sr(source: str | Path, out_dir: str | Path | None = None, *, onnx: bool = True, fp16: bool = False,
              int8: bool = False, trt: str | None = None, images: str | Path | Sequence[np.ndarray] | None = None,
              calib: str | Path | Sequence[np.ndarray] | None = None, calib_images: int = 64,
              verify_images: int = VERIFY_IMAGES, lr_size: int | None = None, workspace_gb: float = 2.0,
              timing_cache: str | Path | None = None, stem: str | None = None):
    """Export an SR generator (see the module docstring); returns a ``deploy.export.ExportResult``.

    ``images`` / ``calib``: verification / calibration LR images (a folder, or uint8 HxWx3 arrays);
    ``int8``: the onnxruntime int8 QDQ graph; ``trt``: None or "fp32" / "fp16" / "int8" (an int8 or fp16 engine
    is built from that graph, made here when not asked for); ``lr_size``: the typical LR side of the TensorRT
    profile (default 320x180). Raises ``CrdError``, writing nothing, when the source is unusable, the output
    folder not writable, or the fp32 graph differs from PyTorch.
    """
    from crdtool.deploy.export import ExportResult, load_run_recipe, check_request, finish_manifest

    check_request(trt, calib_images, verify_images, onnx, fp16, int8)
    source = Path(source)
    model = load_sr_generator(source)
    src_path = model_file(source)
    notes: list[str] = []
    recipe = load_run_recipe(source if source.is_dir() else None, notes)
    want_int8 = int8 or trt == "int8"
    inputs = sr_inputs(images, recipe, model.spec.scale, verify_images, calib_images if want_int8 else 0, notes,
                       calib)
    out = Path(out_dir) if out_dir is not None else (source if source.is_dir() else source.parent) / "export"
    stem = stem or ("student" if source.is_dir() else source.stem.split(".")[0])
    lr_hw = (lr_size, lr_size) if lr_size else FRAME_LR
    with Staging(out) as stage:
        job = _SRExport(model, stem, stage.path, inputs.verify)
        fp32 = job.onnx_fp32(keep=onnx)
        job.reduced(fp32, inputs.calib, fp16 or trt == "fp16")
        trt_message = None if trt is None else job.tensorrt(trt, lr_hw, workspace_gb, timing_cache)
        manifest = sr_manifest(source, src_path, model.spec, job, inputs, notes)
        kept, stale = finish_manifest(manifest, stage, job.log, trt_message)
    return ExportResult(src_path, out, out / MANIFEST_NAME, (1, 3, *lr_hw),
                        {k: out / v for k, v in job.log.published.items()}, job.log.rows, inputs.verify_source,
                        inputs.synthetic, inputs.calib_source, True, trt_message,
                        [*notes, f"PSNR here is PSNR-Y (border {job.scale}) of the uint8 outputs against PyTorch's"],
                        kept, stale)


def sr_manifest(source: Path, src_path: Path, spec: Any, job: _SRExport, inputs: SRInputs,
                notes: list[str]) -> dict[str, Any]:
    verification = {"images": inputs.verify_source, "synthetic": inputs.synthetic, "n_images": len(inputs.verify),
                    "lr_sizes": [list(im.shape[:2]) for im in inputs.verify], "reference": "PyTorch fp32 on CPU",
                    "metric": f"PSNR-Y (BT.601, border {job.scale}) of the uint8 outputs against PyTorch's, pooled",
                    "fp32_max_abs_limit": onnx_mod.FP32_MAX_ABS, "parity": job.shape_checks, "notes": notes}
    calibration = None if inputs.calib is None else {"images": inputs.calib_source, "n_images": len(inputs.calib),
                                                     "method": "minmax", "inputs": "whole LR images in [0, 1]"}
    return {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "task": "sr",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {"path": str(source), "kind": "sr", "sha256": sha256_file(src_path), "generator": spec.to_dict()},
        "input": {"name": "input", "shape": ["batch", 3, "height", "width"], "dtype": "float32", "layout": "NCHW",
                  "color": "RGB", "dynamic": True, "stride": 1, "range": [0.0, 1.0],
                  "normalize": "value = pixel / 255"},
        "output": {"name": "output", "dtype": "float32", "layout": "NCHW", "color": "RGB", "range": [0.0, 1.0],
                   "scale": spec.scale, "denormalize": "pixel = clip(round(value * 255), 0, 255)"},
        "artifacts": [vars(a) for a in job.log.entries],
        "verification": verification,
        "calibration": calibration,
        "versions": library_versions(),
    }


def model_file(source: Path) -> Path:
    from crdtool.models.checkpoints import resolve_generator_path

    return resolve_generator_path(source)

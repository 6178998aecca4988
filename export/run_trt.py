#!/usr/bin/env python3
"""Translate a folder of images with a crdtool TensorRT engine; print per-image latency.

Standalone: copy this file, the .engine (built on this GPU model and TensorRT version) and its
manifest.json to the device. Needs tensorrt, numpy, pillow, and for GPU buffers either torch (if
importable) or cuda-python (`cuda.bindings.runtime`, e.g. on a Jetson without torch). No pycuda, no crdtool.
Pre/post-processing follows the manifest (see run_onnx.py).

    python run_trt.py MODEL.engine IMAGES_DIR OUT_DIR [--manifest manifest.json] [--cuda-python]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
MANIFEST_FORMAT = "crdtool.export"
MANIFEST_VERSION = 1


def load_manifest(path: Path) -> dict:
    data = json.loads(path.read_text())
    if data.get("format") != MANIFEST_FORMAT:
        raise SystemExit(f"error: {path} is not a crdtool export manifest")
    if int(data.get("version", 0)) > MANIFEST_VERSION:
        raise SystemExit(f"error: {path} is manifest version {data['version']}; this runner reads {MANIFEST_VERSION}")
    return data


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SystemExit(f"error: image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise SystemExit(f"error: no images in {folder}")
    return files


def preprocess(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    arr = np.asarray(img.convert("RGB").resize((w, h), Image.BICUBIC), dtype=np.uint8)
    x = arr.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def postprocess(y: np.ndarray) -> Image.Image:
    v = np.round((np.clip(y[0].astype(np.float32), -1, 1) + np.float32(1)) * np.float32(127.5))
    return Image.fromarray(v.astype(np.uint8).transpose(1, 2, 0), "RGB")


class TorchDevice:
    """GPU buffers and stream from torch (CUDA tensors; their data_ptr() is what TensorRT binds)."""

    name = "torch"

    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: torch sees no CUDA GPU")
        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.handle = self.stream.cuda_stream

    def empty(self, shape, dtype):
        t = self.torch.empty(tuple(shape), dtype=getattr(self.torch, np.dtype(dtype).name), device="cuda")
        return t, t.data_ptr()

    def upload(self, buf, array: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.copy_(self.torch.from_numpy(array), non_blocking=False)

    def download(self, buf) -> np.ndarray:
        self.sync()
        return buf.cpu().numpy()

    def sync(self) -> None:
        self.stream.synchronize()


class CudaPythonDevice:
    """GPU buffers and stream from cuda-python's runtime bindings (no torch needed)."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 / 13
        except ImportError:
            from cuda import cudart  # older cuda-python 12.x
        self.rt = cudart
        self.stream = self._ck(cudart.cudaStreamCreate())
        self.handle = int(self.stream)
        self.sizes: dict[int, tuple] = {}

    def _ck(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise SystemExit(f"error: CUDA call failed: {err}")
        return rest[0] if len(rest) == 1 else rest

    def empty(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = self._ck(self.rt.cudaMalloc(nbytes))
        buf = (int(ptr), tuple(shape), np.dtype(dtype), nbytes)
        return buf, int(ptr)

    def upload(self, buf, array: np.ndarray) -> None:
        ptr, _, dtype, nbytes = buf
        host = np.ascontiguousarray(array, dtype=dtype)
        self._ck(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self.sync()

    def download(self, buf) -> np.ndarray:
        ptr, shape, dtype, nbytes = buf
        host = np.empty(shape, dtype)
        self._ck(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        self.sync()
        return host

    def sync(self) -> None:
        self._ck(self.rt.cudaStreamSynchronize(self.stream))


def pick_device(force_cuda_python: bool):
    if not force_cuda_python:
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            return TorchDevice()
    return CudaPythonDevice()


class Engine:
    """One-input, one-output engine bound to buffers of ``device`` by tensor name."""

    def __init__(self, path: Path, device) -> None:
        import tensorrt as trt

        self.trt, self.device = trt, device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise SystemExit(f"error: {path} does not deserialize (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.shape = None

    def bind(self, shape) -> None:
        """(Re)allocate buffers when the input shape changes; a static engine binds once."""
        if self.shape == tuple(shape):
            return
        self.context.set_input_shape(self.input, tuple(shape))
        dt = lambda n: self.trt.nptype(self.engine.get_tensor_dtype(n))  # noqa: E731
        self.x, px = self.device.empty(shape, dt(self.input))
        self.y, py = self.device.empty(tuple(self.context.get_tensor_shape(self.output)), dt(self.output))
        self.context.set_tensor_address(self.input, px)
        self.context.set_tensor_address(self.output, py)
        self.shape = tuple(shape)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        self.bind(x.shape)
        self.device.upload(self.x, x)
        t0 = time.perf_counter()
        if not self.context.execute_async_v3(self.device.handle):
            raise SystemExit("error: TensorRT execution failed")
        self.device.sync()
        ms = (time.perf_counter() - t0) * 1e3
        return self.device.download(self.y), ms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", type=Path)
    ap.add_argument("images", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--manifest", type=Path, default=None, help="default: manifest.json beside the engine")
    ap.add_argument("--cuda-python", action="store_true", help="use cuda-python buffers even if torch is present")
    ap.add_argument("--warmup", type=int, default=10, help="untimed runs before the first image")
    args = ap.parse_args(argv)

    manifest = load_manifest(args.manifest or args.engine.with_name("manifest.json"))
    size = tuple(manifest["input"]["size"])
    device = pick_device(args.cuda_python)
    engine = Engine(args.engine, device)
    zeros = np.zeros((1, 3, *size), np.float32)
    for _ in range(max(args.warmup, 1)):
        engine(zeros)

    args.out.mkdir(parents=True, exist_ok=True)
    times = []
    for path in list_images(args.images):
        try:
            with Image.open(path) as im:
                im.load()
                img = im.convert("RGB")
        except Exception as e:
            print(f"{path.name}: skipped ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        y, ms = engine(preprocess(img, size))
        times.append(ms)
        postprocess(y).save(args.out / f"{path.stem}.png")
        print(f"{path.name}: {ms:.3f} ms")
    if not times:
        print("error: no readable images", file=sys.stderr)
        return 1
    print(f"{len(times)} images, {size[0]}x{size[1]}, TensorRT {engine.trt.__version__} via {device.name}: "
          f"median {statistics.median(times):.3f} ms, min {min(times):.3f} ms "
          f"(execute + sync; host<->device copies excluded; {args.warmup} warm-up runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

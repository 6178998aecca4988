#!/usr/bin/env python3
"""Translate a folder of images with an exported crdtool model on onnxruntime; print per-image latency.

Standalone: copy this file, the .onnx and its manifest.json to the device. Needs onnxruntime, numpy and
pillow only (no crdtool, no torch). Pre/post-processing follows the manifest written by `crdtool export`:
RGB, bicubic resize to the export size, value = pixel / 127.5 - 1, NCHW float32; output pixels are
round((value + 1) * 127.5) clipped to 0..255.

    python run_onnx.py MODEL.onnx IMAGES_DIR OUT_DIR [--manifest manifest.json] [--threads N]
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
    """PIL image -> (1, 3, H, W) float32 in [-1, 1], exactly like crdtool's load_folder_tensor."""
    h, w = size
    arr = np.asarray(img.convert("RGB").resize((w, h), Image.BICUBIC), dtype=np.uint8)
    x = arr.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def postprocess(y: np.ndarray) -> Image.Image:
    """(1, 3, H, W) in [-1, 1] -> RGB image, rounding like crdtool's to_uint8."""
    v = np.round((np.clip(y[0].astype(np.float32), -1, 1) + np.float32(1)) * np.float32(127.5))
    return Image.fromarray(v.astype(np.uint8).transpose(1, 2, 0), "RGB")


def runner_parser(description: str, model_help: str, threads_help: str) -> argparse.ArgumentParser:
    """The arguments every runner takes: model, image folder, output folder, manifest, threads, keep-size."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("model", type=Path, help=model_help)
    ap.add_argument("images", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--manifest", type=Path, default=None, help="default: manifest.json beside the model")
    ap.add_argument("--threads", type=int, default=0, help=threads_help)
    ap.add_argument("--keep-size", action="store_true", help="resize outputs back to each input's size")
    return ap


def translate_folder(infer, images: Path, out: Path, size: tuple[int, int], keep_size: bool, runtime: str) -> int:
    """Run ``infer`` ((1, 3, H, W) float32 -> same) on every image of a folder, save PNGs, print the latency
    of each image and a summary; an unreadable file is skipped with a message, not the end of the run."""
    files = list_images(images)
    out.mkdir(parents=True, exist_ok=True)
    infer(np.zeros((1, 3, *size), np.float32))  # warm-up, not timed
    times = []
    for path in files:
        try:
            with Image.open(path) as im:
                im.load()
                img = im.convert("RGB")
        except Exception as e:  # one bad file must not end the run
            print(f"{path.name}: skipped ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        x = preprocess(img, size)
        t0 = time.perf_counter()
        y = infer(x)
        ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        result = postprocess(y)
        if keep_size:
            result = result.resize(img.size, Image.BICUBIC)
        result.save(out / f"{path.stem}.png")
        print(f"{path.name}: {ms:.2f} ms")
    if not times:
        print("error: no readable images", file=sys.stderr)
        return 1
    print(f"{len(times)} images, {size[0]}x{size[1]}, {runtime}: median {statistics.median(times):.2f} ms, "
          f"min {min(times):.2f} ms (inference only, after 1 warm-up)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = runner_parser(__doc__.splitlines()[0], "the .onnx graph", "intra-op threads (0 = onnxruntime's default)")
    ap.add_argument("--size", type=int, default=None, help="input side for a --dynamic export (multiple of stride)")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    manifest = load_manifest(args.manifest or args.model.with_name("manifest.json"))
    inp = manifest["input"]
    size = tuple(inp["size"])
    if args.size:
        if not inp.get("dynamic"):
            raise SystemExit("error: --size needs a model exported with --dynamic")
        if args.size % int(inp.get("stride", 1)):
            raise SystemExit(f"error: --size must be a multiple of {inp['stride']}")
        size = (args.size, args.size)

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if args.threads:
        opts.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return translate_folder(lambda x: sess.run(None, {name: x})[0], args.images, args.out, size, args.keep_size,
                            f"onnxruntime {ort.__version__} CPU")


if __name__ == "__main__":
    sys.exit(main())

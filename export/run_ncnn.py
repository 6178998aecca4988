#!/usr/bin/env python3
"""Translate a folder of images with an exported crdtool model on ncnn (CPU); print per-image latency.

Standalone: copy this file, run_onnx.py (its pre/post-processing helpers, no onnxruntime needed), the
.ncnn.param + .ncnn.bin pair and manifest.json to the device. Needs ncnn (pip install ncnn), numpy and pillow
only. fp16/bf16 storage and arithmetic are switched off, so it computes in fp32 as it was verified.

    python run_ncnn.py student.ncnn.param IMAGES_DIR OUT_DIR [--threads N] [--keep-size]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_onnx import list_images, load_manifest, postprocess, preprocess  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="the .ncnn.param (its .ncnn.bin beside it)")
    ap.add_argument("images", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--manifest", type=Path, default=None, help="default: manifest.json beside the model")
    ap.add_argument("--threads", type=int, default=0, help="threads (0 = ncnn's default)")
    ap.add_argument("--keep-size", action="store_true", help="resize outputs back to each input's size")
    args = ap.parse_args(argv)

    import ncnn

    manifest = load_manifest(args.manifest or args.model.with_name("manifest.json"))
    size = tuple(manifest["input"]["size"])
    net = ncnn.Net()
    for name in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed"):
        if hasattr(net.opt, name):
            setattr(net.opt, name, False)
    if args.threads:
        net.opt.num_threads = args.threads
    param = str(args.model)
    weights = param[: -len(".param")] + ".bin" if param.endswith(".param") else param + ".bin"
    if net.load_param(param) != 0 or net.load_model(weights) != 0:
        raise SystemExit(f"error: ncnn cannot load {param} and {weights}")

    def infer(x: np.ndarray) -> np.ndarray:
        ex = net.create_extractor()
        ex.input("in0", ncnn.Mat(np.ascontiguousarray(x[0])))  # pnnx names the blobs in0 / out0
        ret, out = ex.extract("out0")
        if ret != 0:
            raise SystemExit(f"error: ncnn extract failed ({ret})")
        return np.array(out)[None]

    files = list_images(args.images)
    args.out.mkdir(parents=True, exist_ok=True)
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
        out = postprocess(y)
        if args.keep_size:
            out = out.resize(img.size, Image.BICUBIC)
        out.save(args.out / f"{path.stem}.png")
        print(f"{path.name}: {ms:.2f} ms")
    if not times:
        print("error: no readable images", file=sys.stderr)
        return 1
    print(f"{len(times)} images, {size[0]}x{size[1]}, ncnn {ncnn.__version__} CPU: "
          f"median {statistics.median(times):.2f} ms, min {min(times):.2f} ms (inference only, after 1 warm-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

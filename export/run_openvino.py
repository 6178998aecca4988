#!/usr/bin/env python3
"""Translate a folder of images with an exported crdtool model on OpenVINO (CPU); print per-image latency.

Standalone: copy this file, run_onnx.py (its pre/post-processing helpers, no onnxruntime needed), the
.xml + .bin pair and manifest.json to the device. Needs openvino, numpy and pillow only. Inference runs in
fp32 (INFERENCE_PRECISION_HINT=f32), as it was verified; on CPUs with bf16 OpenVINO would otherwise pick bf16.

    python run_openvino.py student.xml IMAGES_DIR OUT_DIR [--threads N] [--keep-size]
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
    ap.add_argument("model", type=Path, help="the .xml (its .bin beside it)")
    ap.add_argument("images", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--manifest", type=Path, default=None, help="default: manifest.json beside the model")
    ap.add_argument("--threads", type=int, default=0, help="inference threads (0 = OpenVINO's default)")
    ap.add_argument("--keep-size", action="store_true", help="resize outputs back to each input's size")
    args = ap.parse_args(argv)

    import openvino as ov

    manifest = load_manifest(args.manifest or args.model.with_name("manifest.json"))
    size = tuple(manifest["input"]["size"])
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1}
    if args.threads:
        config["INFERENCE_NUM_THREADS"] = args.threads
    request = ov.Core().compile_model(str(args.model), "CPU", config).create_infer_request()

    files = list_images(args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    request.infer({0: np.zeros((1, 3, *size), np.float32)})  # warm-up, not timed
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
        request.infer({0: x})
        y = np.array(request.get_output_tensor(0).data, copy=True)
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
    print(f"{len(times)} images, {size[0]}x{size[1]}, OpenVINO {ov.__version__} CPU: "
          f"median {statistics.median(times):.2f} ms, min {min(times):.2f} ms (inference only, after 1 warm-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

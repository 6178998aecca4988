#!/usr/bin/env python3
"""Translate a folder of images with an exported crdtool model on ncnn (CPU); print per-image latency.

Standalone: copy this file, run_onnx.py (its pre/post-processing helpers, no onnxruntime needed), the
.ncnn.param + .ncnn.bin pair and manifest.json to the device. Needs ncnn (pip install ncnn), numpy and pillow
only. fp16/bf16 storage and arithmetic are switched off, so it computes in fp32 as it was verified.

    python run_ncnn.py student.ncnn.param IMAGES_DIR OUT_DIR [--threads N] [--keep-size]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_onnx import load_manifest, runner_parser, translate_folder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = runner_parser(__doc__.splitlines()[0], "the .ncnn.param (its .ncnn.bin beside it)", "threads (0 = ncnn's default)")
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

    return translate_folder(infer, args.images, args.out, size, args.keep_size, f"ncnn {ncnn.__version__} CPU")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Translate a folder of images with an exported crdtool model on OpenVINO (CPU); print per-image latency.

Standalone: copy this file, run_onnx.py (its pre/post-processing helpers, no onnxruntime needed), the
.xml + .bin pair and manifest.json to the device. Needs openvino, numpy and pillow only. Inference runs in
fp32 (INFERENCE_PRECISION_HINT=f32), as it was verified; on CPUs with bf16 OpenVINO would otherwise pick bf16.

    python run_openvino.py student.xml IMAGES_DIR OUT_DIR [--threads N] [--keep-size]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_onnx import load_manifest, runner_parser, translate_folder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = runner_parser(__doc__.splitlines()[0], "the .xml (its .bin beside it)", "inference threads (0 = OpenVINO's default)")
    args = ap.parse_args(argv)

    import openvino as ov

    manifest = load_manifest(args.manifest or args.model.with_name("manifest.json"))
    size = tuple(manifest["input"]["size"])
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1}
    if args.threads:
        config["INFERENCE_NUM_THREADS"] = args.threads
    request = ov.Core().compile_model(str(args.model), "CPU", config).create_infer_request()

    def infer(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, copy=True)

    return translate_folder(infer, args.images, args.out, size, args.keep_size, f"OpenVINO {ov.__version__} CPU")


if __name__ == "__main__":
    sys.exit(main())

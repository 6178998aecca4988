#!/usr/bin/env python3
"""Translate a folder of images with an exported crdtool .pte on ExecuTorch (XNNPACK); print per-image latency.

Standalone: copy this file, run_onnx.py (its pre/post-processing helpers, no onnxruntime needed), the .pte
and manifest.json to the device. Needs executorch, numpy and pillow; no crdtool. ExecuTorch's Python
runtime passes tensors as torch tensors, so its pip package brings torch along; on a phone the same .pte runs
from ExecuTorch's C++/Android/iOS runtime instead.

    python run_executorch.py student.pte IMAGES_DIR OUT_DIR [--threads N] [--keep-size]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_onnx import load_manifest, runner_parser, translate_folder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = runner_parser(__doc__.splitlines()[0], "the .pte program", "XNNPACK threads (0 = ExecuTorch's default)")
    args = ap.parse_args(argv)

    import torch  # ExecuTorch's Python runtime takes torch tensors
    from executorch.runtime import Runtime

    manifest = load_manifest(args.manifest or args.model.with_name("manifest.json"))
    size = tuple(manifest["input"]["size"])
    if args.threads:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(args.threads)
    method = Runtime.get().load_program(args.model).load_method("forward")

    def infer(x: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(x)])[0].numpy()

    return translate_folder(infer, args.images, args.out, size, args.keep_size, "ExecuTorch (XNNPACK)")


if __name__ == "__main__":
    sys.exit(main())

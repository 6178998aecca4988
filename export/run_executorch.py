#!/usr/bin/env python3
"""Translate a folder of images with an exported crdtool .pte on ExecuTorch (XNNPACK); print per-image latency.

Standalone: copy this file, run_onnx.py (its pre/post-processing helpers, no onnxruntime needed), the .pte
and manifest.json to the device. Needs executorch, numpy and pillow; no crdtool. ExecuTorch's Python
runtime passes tensors as torch tensors, so its pip package brings torch along; on a phone the same .pte runs
from ExecuTorch's C++/Android/iOS runtime instead.

    python run_executorch.py student.pte IMAGES_DIR OUT_DIR [--threads N] [--keep-size]
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
    ap.add_argument("model", type=Path, help="the .pte program")
    ap.add_argument("images", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--manifest", type=Path, default=None, help="default: manifest.json beside the model")
    ap.add_argument("--threads", type=int, default=0, help="XNNPACK threads (0 = ExecuTorch's default)")
    ap.add_argument("--keep-size", action="store_true", help="resize outputs back to each input's size")
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
    print(f"{len(times)} images, {size[0]}x{size[1]}, ExecuTorch (XNNPACK): "
          f"median {statistics.median(times):.2f} ms, min {min(times):.2f} ms (inference only, after 1 warm-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The library versions every results file and export manifest records (one definition for both)."""

from __future__ import annotations

import platform


def library_versions() -> dict[str, str]:
    """Versions from package metadata, so nothing heavy (TensorRT) is imported just to name it."""
    from importlib import metadata

    from crdtool import __version__

    out = {"python": platform.python_version(), "crdtool": __version__}
    for label, names in (("torch", ["torch"]), ("numpy", ["numpy"]), ("onnx", ["onnx"]),
                         ("onnxruntime", ["onnxruntime", "onnxruntime-gpu"]),
                         ("tensorrt", ["tensorrt", "tensorrt-cu13", "tensorrt-cu12"])):
        for n in names:
            try:
                out[label] = metadata.version(n) + ("" if n == label else f" ({n})")
                break
            except metadata.PackageNotFoundError:
                continue
    return out

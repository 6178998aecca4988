"""ncnn models (``.ncnn.param`` + ``.ncnn.bin``) converted by pnnx from the exported ONNX graph, and run.

ncnn has native InstanceNorm and reflect Padding layers, so the generators convert op for op. Two pnnx/ncnn
defaults would silently change the numbers and are switched off: pnnx stores weights as fp16 unless
``fp16=False``, and ncnn's fp16/bf16 storage and arithmetic options are disabled at load time, so the
artifact computes in fp32 like the PyTorch model it is checked against.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from crdtool.errors import CrdError

PARAM_SUFFIX = ".ncnn.param"
INPUT_BLOB = "in0"  # pnnx names the traced inputs and outputs in0.. / out0..
OUTPUT_BLOB = "out0"


def available() -> str | None:
    """None when ncnn and pnnx can be used here, else a one-line reason."""
    missing = []
    for mod in ("ncnn", "pnnx"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    return f"{' and '.join(missing)} not installed; pip install -e '.[edge]'" if missing else None


def bin_path(param: str | Path) -> Path:
    p = str(param)
    return Path(p[: -len(".param")] + ".bin") if p.endswith(".param") else Path(p + ".bin")


def stem_of(param: str | Path) -> str:
    name = Path(param).name
    return name[: -len(PARAM_SUFFIX)] if name.endswith(PARAM_SUFFIX) else Path(name).stem


def export_ncnn(onnx_path: str | Path, param: str | Path, input_shape: Sequence[int] = (1, 3, 256, 256)) -> Path:
    """Convert the exported ONNX graph with pnnx into ``param`` and its ``.bin`` (fp32 weights).

    pnnx reads ONNX as well as TorchScript. ONNX is used because the graph is already exported and checked,
    and because inside ``crdtool export`` (after the ExecuTorch lowering, in the same process) pnnx failed
    to read a TorchScript trace of the same model ("read_proto_from_binary failed").
    """
    reason = available()
    if reason:
        raise CrdError(reason)
    import pnnx

    param = Path(param)
    # pnnx writes several side files next to its input: work in a private folder, keep only the ncnn pair.
    # The pnnx executable is called directly (not pnnx.convert) to pass fp16=0 and keep its log for errors.
    with tempfile.TemporaryDirectory(prefix=".ncnn-", dir=param.parent) as tmp:
        work = Path(tmp)
        model = work / "model.onnx"
        shutil.copyfile(onnx_path, model)
        out_param, out_bin = work / "model.ncnn.param", work / "model.ncnn.bin"
        shape = ",".join(str(int(s)) for s in input_shape)
        cmd = [pnnx.EXEC_PATH, str(model), f"inputshape=[{shape}]f32", "device=cpu", "fp16=0",
               f"ncnnparam={out_param}", f"ncnnbin={out_bin}"]
        cmd += [f"{k}={work / v}" for k, v in (("ncnnpy", "m_ncnn.py"), ("pnnxparam", "m.pnnx.param"),
                                                ("pnnxbin", "m.pnnx.bin"), ("pnnxpy", "m_pnnx.py"),
                                                ("pnnxonnx", "m.pnnx.onnx"))]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
        if proc.returncode != 0 or not out_param.is_file() or not out_bin.is_file():
            tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise CrdError(f"pnnx could not convert {Path(onnx_path).name} (exit {proc.returncode}): {tail[:200]}")
        check_layers(out_param)
        shutil.move(str(out_bin), bin_path(param))
        shutil.move(str(out_param), param)
    return param


def layer_types(param: str | Path) -> dict[str, int]:
    """Layer type -> count from a ``.param`` text file."""
    counts: dict[str, int] = {}
    lines = Path(param).read_text().splitlines()
    for line in lines[2:]:  # magic, then "layer_count blob_count"
        parts = line.split()
        if parts:
            counts[parts[0]] = counts.get(parts[0], 0) + 1
    return dict(sorted(counts.items()))


def check_layers(param: str | Path) -> None:
    """pnnx keeps an op ncnn cannot run as a layer of the torch op's name (e.g. ``F.pad``); refuse it."""
    unknown = [t for t in layer_types(param) if "." in t]
    if unknown:
        raise CrdError(f"ncnn has no layer for {', '.join(unknown)} (left by pnnx); not writing the ncnn model")


@dataclass
class NcnnInfo:
    path: Path
    layers: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"weights": bin_path(self.path).name, "layers": self.layers, "storage": "fp32"}


class NcnnSession:
    """A loaded ``ncnn.Net`` with fp32 storage and arithmetic and ``threads`` threads."""

    def __init__(self, param: str | Path, threads: int | None = None):
        try:
            import ncnn
        except ImportError as e:
            raise CrdError("ncnn is not installed; pip install -e '.[edge]'") from e

        self.net = ncnn.Net()
        opt = self.net.opt
        for name in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                     "use_bf16_packed"):
            if hasattr(opt, name):
                setattr(opt, name, False)
        if threads:
            opt.num_threads = int(threads)
        self.threads = int(threads or opt.num_threads)
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(bin_path(param))) != 0:
            raise CrdError(f"ncnn cannot load {param} (and {bin_path(param).name})")
        self._ncnn = ncnn

    def run(self, x: np.ndarray) -> np.ndarray:
        """One image: (1, C, H, W) float32 -> (1, C, H, W) float32."""
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"ncnn runs one image at a time, got shape {x.shape}")
        ex = self.net.create_extractor()
        ex.input(INPUT_BLOB, self._ncnn.Mat(np.ascontiguousarray(x[0], np.float32)))
        ret, out = ex.extract(OUTPUT_BLOB)
        if ret != 0:
            raise CrdError(f"ncnn extract failed ({ret})")
        return np.array(out)[None]


def run_ncnn(param: str | Path, images: torch.Tensor, threads: int | None = None) -> np.ndarray:
    sess = NcnnSession(param, threads)
    x = images.detach().cpu().float().numpy()
    return np.concatenate([sess.run(x[i:i + 1]) for i in range(len(x))]).astype(np.float32)

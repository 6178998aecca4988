"""TensorRT engines from the exported ONNX graphs: probe, build, run. TensorRT 10.3 through 11.x.

Common ground of those versions: a strongly typed network, so the ONNX graph decides the precision (an FP16
graph for FP16, symmetric int8 Q/DQ nodes for INT8; no builder precision flags, no calibrators).
TensorRT is imported lazily and probed in a subprocess first (creating a Builder without a GPU can crash the
process). Engines run with torch CUDA tensors as buffers (``set_tensor_address`` + ``execute_async_v3``);
no pycuda. Every function that touches TensorRT takes an optional ``trt`` module so tests can pass a stub.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from crdtool.deploy.onnx import INPUT_NAME, Parity, measure_parity
from crdtool.errors import CrdError
from crdtool.fileio import write_bytes_atomic

TRT_PRECISIONS = ("fp32", "fp16", "int8")
TRT_FP32_MAX_ABS = 1e-3  # GPU kernels sum in another order than the CPU; TF32 is switched off for this gate

_PROBE = r"""
import json, sys
out = {"version": None, "device": None}
try:
    import tensorrt as trt
    out["version"] = trt.__version__
except Exception as e:
    out["reason"] = "TensorRT is not installed (import tensorrt failed: %s)" % type(e).__name__
    print(json.dumps(out)); sys.exit(0)
try:
    import torch
    ok = torch.cuda.is_available()
    out["device"] = torch.cuda.get_device_name(0) if ok else None
except Exception as e:
    ok = False
if not ok:
    out["reason"] = "no CUDA GPU is visible to torch"
    print(json.dumps(out)); sys.exit(0)
builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
if builder is None:
    out["reason"] = "TensorRT could not create a Builder on this GPU"
    print(json.dumps(out)); sys.exit(0)
out["available"] = True
print(json.dumps(out))
"""


@dataclass(frozen=True)
class TrtProbe:
    available: bool
    version: str | None = None
    device: str | None = None
    reason: str = ""


@functools.lru_cache(maxsize=4)
def probe_tensorrt(python: str = sys.executable, timeout: float = 180.0) -> TrtProbe:
    """Is TensorRT importable and usable with a GPU here? Asked in a child process that may crash safely."""
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return TrtProbe(False, reason=f"the TensorRT probe did not finish in {timeout:.0f} s")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        return TrtProbe(False, reason=f"probing TensorRT crashed the child process ({how})")
    info = json.loads(lines[-1])
    return TrtProbe(bool(info.get("available")), info.get("version"), info.get("device"), info.get("reason", ""))


def onnx_for_precision(precision: str, onnx_paths: Mapping[str, Path]) -> Path:
    """The ONNX graph a strongly typed build needs: fp32 graph, FP16 graph, or the int8 QDQ graph."""
    if precision not in TRT_PRECISIONS:
        raise CrdError(f"unknown TensorRT precision {precision!r}; expected one of {', '.join(TRT_PRECISIONS)}")
    path = onnx_paths.get(precision)
    if path is None:
        raise CrdError(f"a {precision} TensorRT engine needs the {precision} ONNX graph, which was not produced")
    return Path(path)


@dataclass(frozen=True)
class ProfileShapes:
    """One optimization profile: the input's smallest, typical and largest shapes."""

    name: str
    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


def profile_shapes(input_shape: Sequence[int], dynamic: bool, stride: int = 4, *, max_batch: int = 8,
                   name: str = INPUT_NAME) -> ProfileShapes | None:
    """None for a static graph; otherwise batch 1..max_batch and sides from half to twice the export size.

    Sides stay multiples of ``stride`` (and at least 2 * stride, so reflection pads have room).
    """
    if not dynamic:
        return None
    n, c, h, w = (int(s) for s in input_shape)
    lo = lambda side: _round_up(max(side // 2, 2 * stride), stride)  # noqa: E731
    return ProfileShapes(name, (1, c, min(lo(h), h), min(lo(w), w)), (n, c, h, w),
                         (max(n, max_batch), c, _round_up(2 * h, stride), _round_up(2 * w, stride)))


def sr_profile_shapes(lr_hw: Sequence[int], cover: Sequence[Sequence[int]] = (), *, max_batch: int = 8,
                      name: str = INPUT_NAME) -> ProfileShapes:
    """The profile of a super-resolution engine, on its LR input: sides from half to twice ``lr_hw`` (the typical
    frame), widened to every LR size in ``cover`` (the verification images). The output is scale x larger;
    TensorRT derives it from the graph, so the profile names only the input."""
    p = profile_shapes((1, 3, *lr_hw), True, stride=1, max_batch=max_batch, name=name)
    hs, ws = [int(hw[0]) for hw in cover], [int(hw[1]) for hw in cover]
    return ProfileShapes(name, (1, 3, min([p.min[2], *hs]), min([p.min[3], *ws])), p.opt,
                         (p.max[0], 3, max([p.max[2], *hs]), max([p.max[3], *ws])))


def default_cache_dir() -> Path:
    env = os.environ.get("CRDTOOL_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crdtool"


def timing_cache_path(trt_version: str, device_name: str, cache_dir: str | Path | None = None) -> Path:
    """One timing cache per TensorRT version and GPU model, reused by every build on that pair."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{trt_version}-{device_name}").strip("-").lower()
    return Path(cache_dir or default_cache_dir()) / "tensorrt" / f"timing-{slug}.cache"


def engine_name(stem: str, precision: str) -> str:
    return f"{stem}.{precision}.engine"


def _import_trt(trt: Any = None) -> Any:
    if trt is not None:
        return trt
    try:
        import tensorrt
    except ImportError as e:
        raise CrdError("TensorRT is not installed (pip install 'crdtool[trt]' on a machine with a GPU)") from e
    return tensorrt


def _capturing_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps error messages, so a failed build can say why in one line."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: D401 - TensorRT callback
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))

    return _Logger()


@dataclass(frozen=True)
class EngineBuild:
    engine: Path
    seconds: float
    timing_cache: Path | None
    tensorrt_version: str
    strongly_typed: bool


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, profile: ProfileShapes | None = None,
                 workspace_gb: float = 2.0, timing_cache: str | Path | None = None, opt_level: int = 3,
                 allow_tf32: bool = False, trt: Any = None) -> EngineBuild:
    """Parse ``onnx_path`` into a strongly typed network, build, check it deserializes, write it atomically.

    ``timing_cache`` is read if present and rewritten with what this build learned.
    """
    trt = _import_trt(trt)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    logger = _capturing_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    has_flag = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if has_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    major = re.match(r"\d+", str(getattr(trt, "__version__", "0")))
    strongly_typed = has_flag or (major is not None and int(major.group()) >= 11)  # the only mode in TensorRT 11
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors or ["unknown error"]
        raise CrdError(f"TensorRT cannot parse {onnx_path.name}: {errs[0]}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = int(opt_level)
    if not allow_tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if profile is not None:
        p = builder.create_optimization_profile()
        p.set_shape(profile.name, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(p)

    cache = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None and blob:  # unreadable or from another TensorRT: start afresh
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        why = logger.errors[-1] if logger.errors else "see the TensorRT log"
        raise CrdError(f"TensorRT could not build an engine from {onnx_path.name}: {why}")
    data = memoryview(serialized).tobytes()
    runtime = trt.Runtime(logger)
    if runtime.deserialize_cuda_engine(data) is None:
        raise CrdError(f"the engine built from {onnx_path.name} does not deserialize on this GPU")
    write_bytes_atomic(engine_path, data)
    if cache is not None:
        write_bytes_atomic(timing_cache, memoryview(config.get_timing_cache().serialize()).tobytes())
    return EngineBuild(engine_path, seconds, timing_cache, str(getattr(trt, "__version__", "?")), strongly_typed)


def _torch_dtype(trt: Any, dtype: Any):
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
             "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}
    for key, tdtype in table.items():
        if hasattr(trt.DataType, key) and dtype == getattr(trt.DataType, key):
            return tdtype
    raise CrdError(f"engine tensor type {dtype} is not supported by the runner")


class TrtRunner:
    """Runs an engine on torch tensors: ``out = runner(x)`` with x (N, 3, H, W) float32.

    Buffers are torch CUDA tensors whose pointers are bound with ``set_tensor_address``; the engine is
    enqueued on torch's current stream. ``device`` is only for tests with a stub TensorRT.
    """

    def __init__(self, engine_path: str | Path, *, trt: Any = None, device: str = "cuda"):
        import torch

        self.trt = _import_trt(trt)
        self.device = torch.device(device)
        self.logger = _capturing_logger(self.trt)
        self.runtime = self.trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise CrdError(f"{engine_path} is not an engine for this TensorRT/GPU ({'; '.join(self.logger.errors)})")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = lambda n: self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT  # noqa: E731
        self.inputs = [n for n in names if is_input(n)]
        self.outputs = [n for n in names if not is_input(n)]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise CrdError(f"expected an engine with one input and one output, got {self.inputs} -> {self.outputs}")

    def __call__(self, x):
        import torch

        inp, out = self.inputs[0], self.outputs[0]
        x = x.to(self.device, _torch_dtype(self.trt, self.engine.get_tensor_dtype(inp))).contiguous()
        self.context.set_input_shape(inp, tuple(x.shape))
        y = torch.empty(tuple(self.context.get_tensor_shape(out)), device=self.device,
                        dtype=_torch_dtype(self.trt, self.engine.get_tensor_dtype(out)))
        self.context.set_tensor_address(inp, x.data_ptr())
        self.context.set_tensor_address(out, y.data_ptr())
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        if not self.context.execute_async_v3(stream):
            raise CrdError(f"TensorRT execution failed: {'; '.join(self.logger.errors) or 'no message'}")
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return y.float()


def run_engine(engine_path: str | Path, images, *, trt: Any = None, device: str = "cuda") -> np.ndarray:
    """Outputs for ``images`` (N, 3, H, W), one image at a time (static engines take batch 1)."""
    return np.concatenate(run_engine_each(engine_path, [images[i:i + 1] for i in range(len(images))], trt=trt,
                                          device=device))


def run_engine_each(engine_path: str | Path, images: Sequence[Any], *, trt: Any = None,
                    device: str = "cuda") -> list[np.ndarray]:
    """One output per (1, 3, h, w) input; the inputs may differ in size (an SR engine on whole LR images)."""
    runner = TrtRunner(engine_path, trt=trt, device=device)
    return [runner(x).cpu().numpy() for x in images]


def verify_engine(engine_path: str | Path, reference: np.ndarray, images, *, trt: Any = None,
                  device: str = "cuda") -> Parity:
    return measure_parity(reference, run_engine(engine_path, images, trt=trt, device=device))

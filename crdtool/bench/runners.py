"""Backends that run one artifact: PyTorch eager / CUDA graphs, onnxruntime (CPU, CUDA, TensorRT EP), TensorRT.

A runner splits a forward pass into ``upload`` (CPU batch -> backend input), ``set_input``, ``run`` (the
part that is timed) and ``output`` (CPU float32), so the timing loop can say exactly what it includes.

Backends: ``torch-cpu``, ``torch-cuda[:bf16|:fp16]``, ``torch-cuda-graph[:bf16|:fp16]``, ``ort-cpu``,
``ort-cuda``, ``ort-trt`` and ``trt`` (a serialized TensorRT engine), and the edge runtimes ``openvino``,
``executorch`` and ``ncnn`` (:mod:`crdtool.bench.edge`). ``auto`` picks per artifact kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crdtool.bench.env import physical_cores
from crdtool.errors import CrdError

TORCH_SUFFIXES = (".safetensors", ".pth", ".pt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
EDGE_BACKENDS = ("openvino", "executorch", "ncnn")
BACKENDS = ("torch-cpu", "torch-cuda", "torch-cuda-graph", "ort-cpu", "ort-cuda", "ort-trt", "trt") + EDGE_BACKENDS
CPU_BACKENDS = ("torch-cpu", "ort-cpu") + EDGE_BACKENDS
EDGE_SUFFIXES = {".xml": "openvino", ".pte": "executorch", ".param": "ncnn"}  # artifact suffix -> kind
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Backend:
    name: str
    precision: str = "fp32"

    @property
    def label(self) -> str:
        return self.name if self.precision == "fp32" else f"{self.name}:{self.precision}"

    @property
    def device_type(self) -> str:
        return "cpu" if self.name in CPU_BACKENDS else "cuda"

    @property
    def framework(self) -> str:
        if self.name in EDGE_BACKENDS:
            return self.name
        return "torch" if self.name.startswith("torch") else "onnx" if self.name.startswith("ort") else "engine"


def parse_backend(text: str) -> Backend:
    """``"torch-cuda-graph:bf16"`` -> Backend; precision suffixes apply to the torch CUDA backends only."""
    name, _, prec = text.strip().partition(":")
    if name not in BACKENDS:
        raise CrdError(f"unknown backend {text!r}; expected one of {', '.join(BACKENDS)} (or auto)")
    prec = prec or "fp32"
    if prec not in PRECISIONS:
        raise CrdError(f"unknown precision {prec!r} in backend {text!r}; expected one of {', '.join(PRECISIONS)}")
    if prec != "fp32" and name not in ("torch-cuda", "torch-cuda-graph"):
        raise CrdError(f"backend {name} takes no precision suffix: an artifact's precision is baked into the file")
    return Backend(name, prec)


def artifact_kind(path: str | Path) -> str:
    """``torch`` (crdtool .safetensors, run folder, official .pth), ``onnx``, ``engine``, or an edge
    runtime's file: ``openvino`` (.xml IR), ``executorch`` (.pte), ``ncnn`` (.ncnn.param)."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() in TORCH_SUFFIXES:
        return "torch"
    if p.suffix.lower() == ".onnx":
        return "onnx"
    if p.suffix.lower() in ENGINE_SUFFIXES:
        return "engine"
    if p.suffix.lower() in EDGE_SUFFIXES:
        return EDGE_SUFFIXES[p.suffix.lower()]
    raise CrdError(f"cannot tell what {p} is: expected a checkpoint (.safetensors, .pth, run folder), .onnx, "
                   f"a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}), an OpenVINO .xml, a .pte or an .ncnn.param")


def default_backend(kind: str) -> Backend:
    cuda = torch.cuda.is_available()
    if kind == "torch":
        return Backend("torch-cuda-graph", "bf16") if cuda else Backend("torch-cpu")
    if kind == "onnx":
        return Backend("ort-cuda") if cuda and "CUDAExecutionProvider" in _ort_providers() else Backend("ort-cpu")
    if kind in EDGE_BACKENDS:
        return Backend(kind)
    return Backend("trt")


def check_compatible(kind: str, backend: Backend, path: str | Path) -> None:
    # a checkpoint is converted for any backend; OpenVINO also reads ONNX directly
    ok = {"torch": ("torch", "onnx") + EDGE_BACKENDS, "onnx": ("onnx", "openvino"), "engine": ("engine",),
          "openvino": ("openvino",), "executorch": ("executorch",), "ncnn": ("ncnn",)}[kind]
    if backend.framework not in ok:
        use = {"torch": "a torch-*, ort-* or edge", "onnx": "an ort-* or the openvino", "engine": "the trt",
               "openvino": "the openvino", "executorch": "the executorch", "ncnn": "the ncnn"}[kind]
        raise CrdError(f"backend {backend.label} cannot run {path} (a {kind} artifact); use {use} backend")


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class Runner:
    """One backend holding one artifact: ``upload`` (CPU [-1,1] batch -> backend input), ``set_input``,
    ``run`` (the timed work), ``output`` (CPU float32), ``sync``."""

    device_type = "cpu"
    use_events = False  # True when the work is enqueued on torch's current CUDA stream
    precision = "fp32"
    fixed_batch: int | None = None
    includes_device = "input and output in host memory (CPU backend: no copies)"
    includes_host = includes_device

    def upload(self, x: torch.Tensor) -> Any:
        return x

    def set_input(self, handle: Any) -> None:
        self._x = handle

    def run(self) -> None:
        raise NotImplementedError

    def output(self) -> torch.Tensor:
        raise NotImplementedError

    def sync(self) -> None:
        if self.device_type == "cuda":
            torch.cuda.synchronize()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.set_input(self.upload(x))
        self.run()
        out = self.output()
        self.sync()
        return out


class TorchRunner(Runner):
    def __init__(self, model: torch.nn.Module, backend: Backend):
        self.device_type = backend.device_type
        self.precision = backend.precision
        self.graph = None
        if self.device_type == "cuda":
            if not torch.cuda.is_available():
                raise CrdError(f"backend {backend.label} needs a CUDA GPU; none is available here")
            self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[backend.precision]
            torch.backends.cudnn.benchmark = True  # static shapes: let cuDNN pick kernels during warm-up
            self.model = model.to("cuda", self.dtype).to(memory_format=torch.channels_last).eval()
            self.use_events = True
            self.includes_device = ("input staged on the GPU before timing, output left on the GPU "
                                    "(host<->device copies excluded); channels_last")
            self.includes_host = "host->device input copy, compute and device->host output copy (synchronised)"
            self._graphed = backend.name == "torch-cuda-graph"
        else:
            self.dtype = torch.float32
            self.model = model.float().eval()
            self._graphed = False
        self._out: torch.Tensor | None = None

    def upload(self, x: torch.Tensor) -> torch.Tensor:
        if self.device_type == "cpu":
            return x.contiguous()
        return x.to("cuda", self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def set_input(self, handle: torch.Tensor) -> None:
        if not self._graphed:
            self._x = handle
            return
        if self.graph is None or tuple(handle.shape) != tuple(self._static.shape):
            self._capture(handle)
        self._static.copy_(handle)

    def _capture(self, example: torch.Tensor) -> None:
        self._static = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(3):  # cuDNN autotuning and allocations happen outside the graph
                self.model(self._static)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self._out = self.model(self._static)

    def run(self) -> None:
        if self._graphed:
            self.graph.replay()
        else:
            with torch.inference_mode():
                self._out = self.model(self._x)

    def output(self) -> torch.Tensor:
        return self._out.float().cpu()


def _onnx_info(path: str | Path) -> tuple[str, int | None]:
    """(precision, static batch) of an ONNX graph: int8 if it has QuantizeLinear nodes, fp16 if fp16 weights."""
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise CrdError(f"{path} is not a readable ONNX file ({type(e).__name__})") from e
    ops = {n.op_type for n in m.graph.node}
    if ops & {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "ConvInteger"}:
        prec = "int8"
    elif any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer):
        prec = "fp16"
    else:
        prec = "fp32"
    dims = m.graph.input[0].type.tensor_type.shape.dim if m.graph.input else []
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
    return prec, batch


class OrtRunner(Runner):
    """onnxruntime session; on GPU providers the input and output live on the device via IO binding.

    ``io_binding_device`` overrides where bound buffers live (tests bind on "cpu" to exercise that path).
    """

    PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                 "ort-trt": "TensorrtExecutionProvider"}

    def __init__(self, onnx_path: str | Path, backend: Backend, threads: int | None, batch: int, size: int,
                 io_binding_device: str | None = None):
        import onnxruntime as ort

        provider = self.PROVIDERS[backend.name]
        if provider not in ort.get_available_providers():
            raise CrdError(f"onnxruntime {ort.__version__} here has no {provider} "
                           f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
        self.precision, _ = _onnx_info(onnx_path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = threads or physical_cores()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        providers = [provider] + (["CUDAExecutionProvider"] if provider == "TensorrtExecutionProvider" else []) + \
            (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        try:
            self.sess = ort.InferenceSession(str(onnx_path), so, providers=providers)
        except Exception as e:
            raise CrdError(f"onnxruntime cannot load {onnx_path}: {str(e).splitlines()[0][:200]}") from e
        if self.sess.get_providers()[0] != provider:
            raise CrdError(f"onnxruntime fell back to {self.sess.get_providers()[0]} instead of {provider}")
        inp, out = self.sess.get_inputs()[0], self.sess.get_outputs()[0]
        self.in_name, self.out_name = inp.name, out.name
        self.np_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        want = (batch, 3, size, size)
        static = [d if isinstance(d, int) else None for d in inp.shape]
        if len(static) == 4 and any(s is not None and s != w for s, w in zip(static[1:], want[1:])):
            raise CrdError(f"{onnx_path} has a static input shape {inp.shape}; pass --size {static[2]}")
        if static and static[0] is not None:
            self.fixed_batch = static[0]
            if static[0] != batch:
                raise CrdError(f"{onnx_path} has a static batch of {static[0]}; pass --batch {static[0]}")
        self.device_type = backend.device_type
        self.bind = io_binding_device or ("cuda" if self.device_type == "cuda" else None)
        if self.bind:
            shape = [d if isinstance(d, int) else w for d, w in zip(out.shape, want)]
            out_dtype = np.float16 if out.type == "tensor(float16)" else np.float32
            self.io = self.sess.io_binding()
            # the output buffer is allocated once, so allocation stays out of the timed runs
            self.io.bind_ortvalue_output(self.out_name, ort.OrtValue.ortvalue_from_shape_and_type(
                shape, out_dtype, self.bind, 0))
        if self.device_type == "cuda":
            self.includes_device = ("input staged on the GPU (IO binding) before timing, output left on the GPU; "
                                    "wall clock per session run (onnxruntime synchronises)")
            self.includes_host = "host->device input copy, session run and device->host output copy"

    def upload(self, x: torch.Tensor) -> Any:
        arr = np.ascontiguousarray(x.numpy().astype(self.np_dtype, copy=False))
        if not self.bind:
            return arr
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(arr, self.bind, 0)

    def set_input(self, handle: Any) -> None:
        if self.bind:
            self.io.bind_ortvalue_input(self.in_name, handle)
        else:
            self._feed = {self.in_name: handle}

    def run(self) -> None:
        if self.bind:
            self.sess.run_with_iobinding(self.io)
        else:
            self._out = self.sess.run([self.out_name], self._feed)[0]

    def output(self) -> torch.Tensor:
        out = self.io.copy_outputs_to_cpu()[0] if self.bind else self._out
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def sync(self) -> None:
        pass  # session runs return after the work is done


class TensorRTRunner(Runner):
    """A serialized engine run with torch CUDA tensors as buffers (no pycuda), as docs/deployment.md describes.

    Buffers are allocated once and bound by name; work is enqueued on torch's current stream, so CUDA
    events time it. ``trt``/``device`` exist for tests with a stub TensorRT on CPU.
    """

    def __init__(self, engine_path: str | Path, batch: int, size: int, *, trt: Any = None, device: str = "cuda"):
        if trt is None:
            if not torch.cuda.is_available():  # creating a TensorRT runtime without a GPU can segfault
                raise CrdError("the trt backend needs a CUDA GPU; none is available here")
            try:
                import tensorrt as trt
            except ImportError as e:
                raise CrdError("TensorRT is not installed (pip install crdtool[trt] on a machine with an NVIDIA GPU)"
                               ) from e
        self.trt, self.device = trt, torch.device(device)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise CrdError(f"TensorRT {getattr(trt, '__version__', '?')} cannot deserialize {engine_path} "
                           "(built by another TensorRT version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        if len(ins) != 1 or len(outs) != 1:
            raise CrdError(f"{engine_path}: expected one input and one output, got {ins} -> {outs}")
        self.in_name, self.out_name = ins[0], outs[0]
        declared = list(self.engine.get_tensor_shape(self.in_name))
        if any(d < 0 for d in declared):  # dynamic profile: fix this measurement's shape
            shape = [batch, declared[1] if declared[1] > 0 else 3, size, size]
            self.context.set_input_shape(self.in_name, shape)
        else:
            shape = declared
            self.fixed_batch = shape[0]
            if shape[0] != batch or list(shape[2:]) != [size, size]:
                raise CrdError(f"{engine_path} has a static input shape {shape}; "
                               f"pass --batch {shape[0]} --size {shape[2]}")
        self.x = torch.empty(shape, dtype=self._dtype(self.in_name), device=self.device)
        self.y = torch.empty(tuple(self.context.get_tensor_shape(self.out_name)), dtype=self._dtype(self.out_name),
                             device=self.device)
        self.context.set_tensor_address(self.in_name, self.x.data_ptr())
        self.context.set_tensor_address(self.out_name, self.y.data_ptr())
        self.device_type = self.device.type
        self.use_events, self.precision = self.device.type == "cuda", "engine"
        self.includes_device = "input staged on the GPU before timing, output left on the GPU (GPU compute time)"
        self.includes_host = "host->device input copy, engine execution and device->host output copy (synchronised)"

    def _dtype(self, name: str) -> torch.dtype:
        dt = self.engine.get_tensor_dtype(name)
        table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8}
        for key, value in table.items():
            if getattr(self.trt.DataType, key, object()) == dt:
                return value
        raise CrdError(f"engine tensor {name!r} has an unsupported data type {dt}")

    def upload(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, self.x.dtype)

    def set_input(self, handle: torch.Tensor) -> None:
        self.x.copy_(handle)

    def run(self) -> None:
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        if not self.context.execute_async_v3(stream):
            raise CrdError("TensorRT execution failed")

    def output(self) -> torch.Tensor:
        return self.y.float().cpu()

"""ExecuTorch ``.pte`` programs with the XNNPACK delegate: export, exact delegable rewrites, int8, run.

Why the rewrites: lowered as they are, the generators' InstanceNorm (``_native_batch_norm_legit.no_stats``)
and ReflectionPad2d (``arange``/``abs``/``sub``/``index``) have no XNNPACK kernel. They stay in ExecuTorch's
portable kernels and cut the graph into ~60 delegate islands, so the student ran no faster than eager
torch. ``xnnpack_friendly`` swaps them for modules that compute the same values from ops XNNPACK does run
(``mean.dim``, ``sub``, ``mul``, ``rsqrt``, ``slice_copy``, ``cat``): the normalisation is the same formula
(biased variance, same eps) and the padding copies the same pixels, so the output moves only by float
rounding order. Every program is still parity-checked against the original PyTorch module.

Any op that is still not delegated is listed (``PteInfo.undelegated``): it runs in a portable kernel, which
is exact but slow; nothing is silently replaced by something else.
"""

from __future__ import annotations

import collections
import copy
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from crdtool.errors import CrdError
from crdtool.fileio import atomic_path

PTE_SUFFIX = ".pte"
HELPER_OPS = {"getitem", "executorch_call_delegate"}  # bookkeeping nodes, not computation


def available() -> str | None:
    """None when ExecuTorch with XNNPACK can be used here, else a one-line reason."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError as e:
        return f"ExecuTorch is not installed ({e.name or e}); pip install -e '.[edge]'"
    return None


# ------------------------------------------------------------------------------------ exact rewrites


class DelegableInstanceNorm2d(nn.Module):
    """InstanceNorm2d (no running stats) as mean / sub / mul / rsqrt, which XNNPACK delegates."""

    def __init__(self, norm: nn.InstanceNorm2d):
        super().__init__()
        if norm.track_running_stats:
            raise ValueError("only InstanceNorm2d without running statistics can be rewritten")
        self.eps = float(norm.eps)
        self.affine = norm.affine
        if norm.affine:
            self.weight = nn.Parameter(norm.weight.detach().clone().view(1, -1, 1, 1), requires_grad=False)
            self.bias = nn.Parameter(norm.bias.detach().clone().view(1, -1, 1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=(2, 3), keepdim=True)
        var = (centred * centred).mean(dim=(2, 3), keepdim=True)  # biased, as InstanceNorm
        y = centred * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y


class SliceReflectionPad2d(nn.Module):
    """ReflectionPad2d as slices and one concatenation per axis (copies the same pixels)."""

    def __init__(self, pad: nn.ReflectionPad2d):
        super().__init__()
        self.left, self.right, self.top, self.bottom = (int(p) for p in pad.padding)

    @staticmethod
    def _axis(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
        if before == 0 and after == 0:
            return x
        n = x.shape[dim]
        parts = [x.narrow(dim, i, 1) for i in range(before, 0, -1)]  # x[before], ..., x[1]
        parts.append(x)
        parts += [x.narrow(dim, n - 1 - i, 1) for i in range(1, after + 1)]  # x[n-2], ..., x[n-1-after]
        return torch.cat(parts, dim=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._axis(self._axis(x, self.left, self.right, 3), self.top, self.bottom, 2)


def xnnpack_friendly(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """A float32 CPU eval copy with InstanceNorm2d and ReflectionPad2d swapped for delegable equivalents."""
    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    counts = {"instance_norm": 0, "reflection_pad": 0}

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.InstanceNorm2d) and not child.track_running_stats:
                setattr(parent, name, DelegableInstanceNorm2d(child))
                counts["instance_norm"] += 1
            elif isinstance(child, nn.ReflectionPad2d):
                setattr(parent, name, SliceReflectionPad2d(child))
                counts["reflection_pad"] += 1
            else:
                swap(child)

    swap(net)
    return net, counts


# ------------------------------------------------------------------------------------ export


@dataclass
class PteInfo:
    path: Path
    precision: str  # fp32 | int8
    rewrites: dict[str, int]
    delegate_calls: int  # XNNPACK subgraphs (fewer = fewer hand-overs to portable kernels)
    undelegated: dict[str, int] = field(default_factory=dict)  # op -> count run by portable kernels

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "rewrites": self.rewrites, "xnnpack_subgraphs": self.delegate_calls,
                "undelegated_ops": self.undelegated}


def _op_name(target: Any) -> str:
    name = getattr(target, "__name__", None) or str(target)
    return str(name).split(":")[0].replace("<EdgeOpOverload", "").strip(" <>")


def undelegated_ops(graph_module: torch.fx.GraphModule) -> tuple[dict[str, int], int]:
    """(op -> count for computation outside XNNPACK, number of XNNPACK calls) of a lowered program."""
    ops: collections.Counter[str] = collections.Counter()
    calls = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        if name == "executorch_call_delegate":
            calls += 1
        elif name not in HELPER_OPS:
            ops[name] += 1
    return dict(sorted(ops.items())), calls


def _quiet():
    for name in ("torch.export", "torch._export", "executorch", "torchao", "torch.fx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def quantize_int8(model: nn.Module, example: torch.Tensor, calib: torch.Tensor, batch: int = 1) -> nn.Module:
    """XNNPACK's symmetric int8 (per-channel weights, per-tensor activations), PT2E, calibrated on ``calib``.

    Activations are observed by min/max (as the onnxruntime QDQ export does) instead of the config's default
    histogram observer, whose histogram merging took over 10 minutes per 256x256 teacher calibration here.
    """
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True)
    minmax = MinMaxObserver.with_args(eps=2**-12)
    config = dataclasses.replace(config, **{
        name: dataclasses.replace(getattr(config, name), observer_or_fake_quant_ctr=minmax)
        for name in ("input_activation", "output_activation") if getattr(config, name) is not None})
    quantizer = XNNPACKQuantizer().set_global(config)
    graph = torch.export.export(model, (example,), strict=False).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(0, len(calib), batch):
            prepared(calib[i:i + batch].float())
    return convert_pt2e(prepared)


def export_pte(model: nn.Module, path: str | Path, input_shape: Sequence[int] = (1, 3, 256, 256), *,
               rewrite: bool = True, calib: torch.Tensor | None = None) -> PteInfo:
    """Lower ``model`` to an ExecuTorch program with the XNNPACK delegate; int8 when ``calib`` is given."""
    reason = available()
    if reason:
        raise CrdError(reason)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    _quiet()
    path = Path(path)
    net, counts = xnnpack_friendly(model) if rewrite else (copy.deepcopy(model).float().eval(), {})
    example = torch.zeros(tuple(int(s) for s in input_shape))
    with torch.no_grad():
        if calib is not None:
            net = quantize_int8(net, example, calib, batch=int(input_shape[0]))
        ep = torch.export.export(net, (example,), strict=False)
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        undelegated, calls = undelegated_ops(edge.exported_program().graph_module)
        program = edge.to_executorch()
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(program.buffer)
    return PteInfo(path, "int8" if calib is not None else "fp32", counts, calls, undelegated)


# ------------------------------------------------------------------------------------ run


def set_threads(threads: int) -> None:
    """XNNPACK's thread pool is process-wide; ExecuTorch's Python binding resets it here."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(int(threads))


class PteSession:
    """One loaded ``forward`` method; ``run`` takes and returns float32 NCHW numpy arrays."""

    def __init__(self, path: str | Path, threads: int | None = None):
        reason = available()
        if reason:
            raise CrdError(reason)
        from executorch.runtime import Runtime

        if threads:
            set_threads(threads)
        try:
            program = Runtime.get().load_program(Path(path))
            self.method = program.load_method("forward")
        except Exception as e:  # the runtime raises RuntimeError with a multi-line log
            raise CrdError(f"ExecuTorch cannot load {path}: {str(e).splitlines()[0][:200]}") from e
        meta = self.method.metadata.input_tensor_meta(0)
        self.input_shape = tuple(int(s) for s in meta.sizes())

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.execute([x.contiguous()])[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_tensor(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()


def run_pte(path: str | Path, images: torch.Tensor, threads: int | None = None) -> np.ndarray:
    """Outputs for ``images`` (N, 3, H, W), run in the program's static batch."""
    sess = PteSession(path, threads)
    b = sess.input_shape[0]
    x = images.detach().cpu().float()
    if tuple(x.shape[1:]) != sess.input_shape[1:] or len(x) % b:
        raise CrdError(f"{Path(path).name} takes {list(sess.input_shape)} inputs, got {list(x.shape)}")
    return np.concatenate([sess.run_tensor(x[i:i + b]).numpy() for i in range(0, len(x), b)]).astype(np.float32)

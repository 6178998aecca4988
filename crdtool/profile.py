"""MACs and parameters of a generator, per layer, in two counting conventions, with fvcore.

Why two conventions: papers (GAN Compression, OMGD, CRD) report torchprofile's numbers, which
count a ConvTranspose over its *output* grid (4x too many at stride 2) and an affine norm as one
MAC per element; the real multiply-accumulate count differs. crdtool reports both:

* ``literature`` (default, torchprofile-compatible): conv = output elements x in_ch/groups x k*k,
  no bias; ConvTranspose over the output grid; Batch/Instance/Layer/GroupNorm = output elements
  when affine, else 0; ``aten::mul`` / ``aten::leaky_relu`` (not the in-place variant, as in
  torchprofile) / average pools = output elements, bilinear upsampling = 4 x output elements;
  add, activations, padding, concatenation = 0.
* ``exact``: every multiply-accumulate of a contraction (conv, ConvTranspose over its *input*
  grid, linear, matmul) once; nothing else. This is what ``torch.utils.flop_counter`` reports
  (as FLOPs = 2 x MACs), which the tests use to catch a break in fvcore's TorchScript tracing.

A third total, ``agd``, is AutoGAN-Distiller's figure: its code counts with thop, whose rules add one
op per output element for a conv's bias and one per LeakyReLU output element to the convolutions'
MACs. That is how AGD's table gets 1176.61G for ESRGAN's RRDBNet at a 256x256 input, where the
convolutions alone are 1174.85G. It is a total only (rows and ``--top`` use the two above).

One trace per model yields all: each op handle returns a counter keyed ``"<convention>:<op>"``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from crdtool.errors import CrdError
from crdtool.models.registry import GeneratorSpec, build_generator, generator_stride

PROFILE_FORMAT = "crdtool.profile"
PROFILE_VERSION = 1
CONVENTIONS = ("literature", "exact")
DEFAULT_CONVENTION = "literature"
TOTAL_ONLY_CONVENTIONS = ("agd",)  # reported as totals (ModelProfile.extra_macs), not per layer

# Ops that cost 0 MACs in both conventions (elementwise, data movement). Listing them keeps them
# out of the "unsupported" report; anything else without a rule is reported once by name.
_ZERO_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::rsub", "aten::div", "aten::div_",
    "aten::relu", "aten::relu_", "aten::tanh", "aten::tanh_", "aten::sigmoid",
    "aten::sigmoid_", "aten::hardtanh", "aten::hardtanh_", "aten::gelu", "aten::silu", "aten::silu_",
    "aten::hardswish", "aten::hardswish_", "aten::hardsigmoid", "aten::threshold", "aten::elu", "aten::elu_",
    "aten::pad", "aten::reflection_pad1d", "aten::reflection_pad2d", "aten::replication_pad1d",
    "aten::replication_pad2d", "aten::constant_pad_nd", "aten::zero_pad2d", "aten::cat", "aten::stack",
    "aten::dropout", "aten::dropout_", "aten::feature_dropout", "aten::alpha_dropout", "aten::clone",
    "aten::max_pool2d", "aten::max_pool2d_with_indices", "aten::upsample_nearest2d", "aten::pixel_shuffle",
    "aten::pixel_unshuffle", "aten::sum", "aten::softmax", "aten::detach", "aten::contiguous",
    "aten::clamp", "aten::clamp_min", "aten::sqrt", "aten::eye", "aten::view_as",
)


@dataclass(frozen=True)
class LayerProfile:
    """One module's own cost: ops run directly in its forward (children excluded) and its own params."""

    path: str  # module path as in named_modules(); "" is the root
    op: str  # module class name, e.g. Conv2d
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    macs: dict[str, int]  # convention -> MACs
    params: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "op": self.op,
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "output_shape": list(self.output_shape) if self.output_shape else None,
                "macs": dict(self.macs), "params": self.params}


@dataclass(frozen=True)
class ModelProfile:
    """Totals and per-layer rows of one model at one input shape; rows sum to the totals."""

    name: str
    input_shape: tuple[int, ...]
    params: int
    macs: dict[str, int]  # convention -> total MACs
    by_op: dict[str, dict[str, int]]  # convention -> {op kind: MACs}, e.g. conv, conv_transpose, norm
    rows: tuple[LayerProfile, ...]
    unsupported_ops: dict[str, int] = field(default_factory=dict)  # aten op -> times seen, counted as 0
    spec: GeneratorSpec | None = None
    extra_macs: dict[str, int] = field(default_factory=dict)  # TOTAL_ONLY_CONVENTIONS -> total MACs

    def total(self, convention: str = DEFAULT_CONVENTION) -> int:
        if convention in self.extra_macs:
            return self.extra_macs[convention]
        return self.macs[check_convention(convention)]

    def share(self, row: LayerProfile, convention: str = DEFAULT_CONVENTION) -> float:
        total = self.total(convention)
        return row.macs[convention] / total if total else 0.0

    def top(self, k: int, convention: str = DEFAULT_CONVENTION) -> list[LayerProfile]:
        """The ``k`` rows with the most MACs (ties keep network order)."""
        check_convention(convention)
        return sorted(self.rows, key=lambda r: -r.macs[convention])[: max(k, 0)]

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            d = r.to_dict()
            d["share"] = {c: self.share(r, c) for c in CONVENTIONS}
            rows.append(d)
        return {"name": self.name, "spec": self.spec.to_dict() if self.spec else None,
                "input_shape": list(self.input_shape), "params": self.params, "macs": dict(self.macs),
                "extra_macs": dict(self.extra_macs),
                "by_op": {c: dict(v) for c, v in self.by_op.items()},
                "unsupported_ops": dict(self.unsupported_ops), "rows": rows}


@dataclass(frozen=True)
class Comparison:
    """Teacher vs student: what compression buys."""

    teacher: ModelProfile
    student: ModelProfile
    name: str = ""

    def mac_ratio(self, convention: str = DEFAULT_CONVENTION) -> float:
        s = self.student.total(convention)
        return self.teacher.total(convention) / s if s else math.inf

    @property
    def param_ratio(self) -> float:
        return self.teacher.params / self.student.params if self.student.params else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "teacher": self.teacher.to_dict(), "student": self.student.to_dict(),
                "ratios": {"macs": {c: self.mac_ratio(c) for c in CONVENTIONS}, "params": self.param_ratio}}


def check_convention(convention: str, total_only: bool = False) -> str:
    """``total_only`` also accepts the conventions reported as totals only (``agd``)."""
    if convention not in CONVENTIONS and not (total_only and convention in TOTAL_ONLY_CONVENTIONS):
        raise CrdError(f"unknown counting convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    return convention


def profile_document(result: ModelProfile | Comparison) -> dict[str, Any]:
    """The versioned JSON document ``crdtool profile --json`` prints."""
    kind = "comparison" if isinstance(result, Comparison) else "model"
    return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "kind": kind,
            "conventions": list(CONVENTIONS), "default_convention": DEFAULT_CONVENTION, **result.to_dict()}


# ---------------------------------------------------------------- counting rules (fvcore handles)

def _fvcore_nn():
    """fvcore.nn, imported quietly: its import scripts a few losses with the deprecated torch.jit.script."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import fvcore.nn
            import fvcore.nn.jit_handles  # noqa: F401
    except ImportError as e:  # e.g. a GPU box with only the runtime packages: bench still times, without MACs
        raise CrdError(f"counting MACs needs fvcore, which is not importable here ({e}); pip install fvcore") from None
    return fvcore.nn


def _shape(value: Any) -> list[int] | None:
    return _fvcore_nn().jit_handles.get_shape(value)


def _numel(value: Any) -> int:
    shape = _shape(value)
    return math.prod(shape) if shape else 0


def _both(op: str, literature: int, exact: int) -> Counter:
    return Counter({f"literature:{op}": int(literature), f"exact:{op}": int(exact)})


def _conv_handle(inputs: list, outputs: list) -> Counter:
    """aten::_convolution: weight numel x output (literature) or input (exact, transposed) grid."""
    x, w, out = _shape(inputs[0]), _shape(inputs[1]), _shape(outputs[0])
    transposed = bool(inputs[6].toIValue())
    per_position = math.prod(w)  # out_ch * in_ch/groups * k*k (or in_ch * out_ch/groups * k*k transposed)
    literature = out[0] * math.prod(out[2:]) * per_position
    exact = x[0] * math.prod(x[2:]) * per_position if transposed else literature
    counts = _both("conv_transpose" if transposed else "conv", literature, exact)
    has_bias = _shape(inputs[2]) is not None
    counts["agd:conv"] = literature + (math.prod(out) if has_bias else 0)  # thop: + 1 per output for a bias
    return counts


def _contraction(fvcore_handle: Callable, op: str) -> Callable:
    """Linear algebra ops: fvcore already counts one per MAC; the same in both conventions."""

    def handle(inputs: list, outputs: list) -> Counter:
        n = fvcore_handle(inputs, outputs)
        n = sum(n.values()) if isinstance(n, Counter) else n
        return _both(op, n, n)

    return handle


def _norm_handle(weight_index: int) -> Callable:
    """Affine norms: one MAC per output element in the literature (scale+shift); 0 exact."""

    def handle(inputs: list, outputs: list) -> Counter:
        affine = len(inputs) > weight_index and _shape(inputs[weight_index]) is not None
        return _both("norm", _numel(outputs[0]) if affine else 0, 0)

    return handle


def _literature_elementwise(op: str, per_element: int = 1) -> Callable:
    def handle(inputs: list, outputs: list) -> Counter:
        return _both(op, per_element * _numel(outputs[0]), 0)

    return handle


def _leaky_relu_handle(inplace: bool) -> Callable:
    """thop (AGD) counts one op per LeakyReLU output; the literature convention only the out-of-place op."""

    def handle(inputs: list, outputs: list) -> Counter:
        n = _numel(outputs[0])
        counts = Counter() if inplace else _both("leaky_relu", n, 0)
        counts["agd:leaky_relu"] = n
        return counts

    return handle


def _op_handles() -> dict[str, Callable]:
    jh = _fvcore_nn().jit_handles
    handles: dict[str, Callable] = {
        "aten::_convolution": _conv_handle,
        "aten::addmm": _contraction(jh.addmm_flop_jit, "linear"),
        "aten::linear": _contraction(jh.linear_flop_jit, "linear"),
        "aten::matmul": _contraction(jh.matmul_flop_jit, "matmul"),
        "aten::mm": _contraction(jh.matmul_flop_jit, "matmul"),
        "aten::bmm": _contraction(jh.bmm_flop_jit, "matmul"),
        "aten::einsum": _contraction(jh.einsum_flop_jit, "matmul"),
        "aten::batch_norm": _norm_handle(1),
        "aten::instance_norm": _norm_handle(1),
        "aten::layer_norm": _norm_handle(2),
        "aten::group_norm": _norm_handle(2),
        "aten::mul": _literature_elementwise("mul"),
        "aten::mul_": _literature_elementwise("mul"),
        "aten::leaky_relu": _leaky_relu_handle(inplace=False),
        "aten::leaky_relu_": _leaky_relu_handle(inplace=True),
        "aten::upsample_bilinear2d": _literature_elementwise("upsample", 4),
    }
    for name in ("aten::avg_pool2d", "aten::adaptive_avg_pool2d", "aten::mean"):
        handles[name] = _literature_elementwise("pool")
    return handles


# ---------------------------------------------------------------- profiling

def check_size(model_or_spec: nn.Module | GeneratorSpec, size: int) -> None:
    """A one-line error unless ``size`` is positive and divisible by the network's stride."""
    stride = generator_stride(model_or_spec)
    spec = model_or_spec if isinstance(model_or_spec, GeneratorSpec) else getattr(model_or_spec, "spec", None)
    what = spec.describe() if spec is not None else type(model_or_spec).__name__
    if size <= 0 or size % stride:
        lower = max(stride, size - size % stride) if size > 0 else stride
        hint = f"; try {lower}" + (f" or {lower + stride}" if size > stride else "")
        raise CrdError(f"--size {size} does not fit {what}: the side must be a positive multiple of its stride "
                       f"{stride}{hint}")


def profile_model(model: nn.Module, input_shape: Sequence[int] = (1, 3, 256, 256), name: str | None = None
                  ) -> ModelProfile:
    """Count MACs (both conventions) and parameters of ``model`` on a zero input of ``input_shape``.

    The model is traced once, in eval mode (batch norm on a 1x1 map needs running statistics) and
    without gradients; its training flag is restored afterwards.
    """
    FlopCountAnalysis = _fvcore_nn().FlopCountAnalysis
    input_shape = tuple(int(s) for s in input_shape)
    for side in sorted(set(input_shape[2:])):
        check_size(model, side)
    param = next(model.parameters(), None)
    x = torch.zeros(input_shape, device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)

    shapes: dict[nn.Module, tuple[tuple[int, ...] | None, tuple[int, ...] | None]] = {}

    def record(module: nn.Module, args: tuple, output: Any) -> None:
        if module not in shapes:
            shapes[module] = (_first_shape(args), _first_shape(output))

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    was_training = model.training
    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    analysis.set_op_handle(**_op_handles())
    analysis.set_op_handle(**{op: None for op in _ZERO_OPS})
    logger = logging.getLogger("fvcore.nn.jit_analysis")
    level, threads = logger.level, torch.get_num_threads()
    try:
        model.eval()
        logger.setLevel(logging.ERROR)
        # The trace runs a real forward whose speed does not matter; one intra-op thread avoids OpenMP
        # spin-waiting, which made it several times slower on a busy 2-core machine.
        torch.set_num_threads(1)
        with torch.no_grad():
            counts = analysis.by_module_and_operator()
        unsupported = dict(analysis.unsupported_ops())
    finally:
        torch.set_num_threads(threads)
        logger.setLevel(level)
        model.train(was_training)
        for h in hooks:
            h.remove()

    totals = counts.get("", Counter())
    macs = {c: _sum_convention(totals, c) for c in CONVENTIONS}
    by_op = {c: {k.split(":", 1)[1]: int(v) for k, v in totals.items() if k.startswith(c + ":")} for c in CONVENTIONS}
    rows = _rows(model, counts, shapes)
    spec = getattr(model, "spec", None)
    params = sum(p.numel() for p in model.parameters())
    if name is None:
        name = spec.describe() if isinstance(spec, GeneratorSpec) else type(model).__name__
    return ModelProfile(name=name, input_shape=input_shape, params=params, macs=macs, by_op=by_op,
                        rows=tuple(rows), unsupported_ops=unsupported,
                        spec=spec if isinstance(spec, GeneratorSpec) else None,
                        extra_macs={c: _sum_convention(totals, c) for c in TOTAL_ONLY_CONVENTIONS})


def _first_shape(obj: Any) -> tuple[int, ...] | None:
    if isinstance(obj, torch.Tensor):
        return tuple(int(s) for s in obj.shape)  # traced sizes are tensors
    if isinstance(obj, (tuple, list)):
        for item in obj:
            shape = _first_shape(item)
            if shape is not None:
                return shape
    return None


def _sum_convention(counter: Counter, convention: str) -> int:
    return int(sum(v for k, v in counter.items() if k.startswith(convention + ":")))


def _rows(model: nn.Module, counts: dict[str, Counter],
          shapes: dict[nn.Module, tuple]) -> list[LayerProfile]:
    """Called leaf modules, plus any module whose own forward runs counted ops (self = total - children)."""
    rows = []
    for path, module in model.named_modules():
        children = [f"{path}.{n}" if path else n for n, _ in module.named_children()]
        own = {c: _sum_convention(counts.get(path, Counter()), c)
               - sum(_sum_convention(counts.get(ch, Counter()), c) for ch in children) for c in CONVENTIONS}
        params = sum(p.numel() for p in module.parameters(recurse=False))
        if (not children and module in shapes) or any(own.values()) or params:
            in_shape, out_shape = shapes.get(module, (None, None))
            rows.append(LayerProfile(path, type(module).__name__, in_shape, out_shape, own, params))
    return rows


def profile_spec(spec: GeneratorSpec, size: int = 256, batch: int = 1) -> ModelProfile:
    """Build ``spec`` (uninitialised weights: counts do not depend on values) and profile it."""
    spec = spec.resolved()
    check_size(spec, size)
    model = build_generator(spec, init=False)
    return profile_model(model, (batch, spec.input_nc, size, size))


def profile_checkpoint(path: str | Path, size: int = 256) -> ModelProfile:
    """Profile a generator file (crdtool .safetensors, run folder, official .pth, Real-ESRGAN/ESRGAN
    .pth) or an ``arch.json``."""
    from crdtool.models.checkpoints import load_generator

    if str(path).endswith(".json"):
        from crdtool.models.sr_student import load_arch_spec

        return profile_spec(load_arch_spec(path), size)
    model = _load_any_generator(path)
    spec: GeneratorSpec = model.spec  # type: ignore[assignment]
    check_size(spec, size)
    result = profile_model(model, (1, spec.input_nc, size, size), name=f"{spec.describe()} ({Path(path).name})")
    return result


def _load_any_generator(path: str | Path) -> nn.Module:
    """crdtool's own files and CycleGAN .pth via ``load_generator``; an RRDBNet release (``conv_first``,
    ``params_ema``, ESRGAN's ``model.0``) through ``rrdb.load_rrdb``."""
    from crdtool.models.checkpoints import load_generator
    from crdtool.models.rrdb import load_rrdb

    try:
        return load_generator(path)
    except CrdError:
        try:
            return load_rrdb(path)
        except CrdError:
            pass
        raise


def compare(teacher: ModelProfile, student: ModelProfile, name: str = "") -> Comparison:
    return Comparison(teacher=teacher, student=student, name=name)


def compare_specs(teacher: GeneratorSpec, student: GeneratorSpec, size: int = 256, name: str = "") -> Comparison:
    """Teacher vs student at one resolution: what ``crdtool quickstart`` and recipes show."""
    return compare(profile_spec(teacher, size), profile_spec(student, size), name)


def profile_recipe(path: str | Path, size: int | None = None) -> Comparison:
    """Teacher vs student of a recipe, at ``size`` or the recipe's crop size."""
    from crdtool.recipe import load_recipe

    recipe = load_recipe(path)
    return compare_specs(recipe.teacher.spec(), recipe.student.spec(),
                         recipe.data.crop_size if size is None else size, recipe.name)


# ---------------------------------------------------------------- formatting (pure)

def format_macs(n: float) -> str:
    """4 significant digits with a unit: 56.80G, 1.408G, 18.31G, 87.98M; from 1000G on, two decimals
    (1174.85G, ESRGAN's RRDBNet: 4 digits would hide what separates the counting conventions)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return (f"{n / scale:.2f}" if unit == "G" and abs(n) >= 1e12 else _sig4(n / scale)) + unit
    return str(int(n))


def _sig4(v: float) -> str:
    digits = max(0, 3 - int(math.floor(math.log10(abs(v))))) if v else 0
    text = f"{v:.{digits}f}"
    if len(text.replace(".", "").replace("-", "").lstrip("0")) > 4 and digits > 0:  # 9999.5 rounding up
        text = f"{v:.{digits - 1}f}"
    return text


def format_params(n: int) -> str:
    """Millions with 3 decimals, as papers print them: 11.378M, 0.137M; small counts as K or plain."""
    if n >= 100_000:
        return f"{n / 1e6:.3f}M"
    if n >= 1_000:
        return f"{n / 1e3:.3f}K"
    return str(n)


def format_ratio(r: float) -> str:
    return "inf" if math.isinf(r) else f"{r:.1f}x"


def format_shape(shape: Sequence[int] | None, batch: bool = True) -> str:
    """1x3x256x256, or 3x256x256 without the batch dimension."""
    if not shape:
        return "-"
    return "x".join(str(s) for s in (shape if batch else shape[1:]))

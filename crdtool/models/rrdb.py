"""Generator family ``rrdb``: ESRGAN's RRDBNet (Wang et al. 2018), the super-resolution teacher.

The module names follow BasicSR / Real-ESRGAN (``conv_first``, ``body.N.rdb1.conv1``, ``conv_body``,
``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``), so their released ``.pth`` files load as they
are; the original ESRGAN layout (``model.0``, ``model.1.sub.N.RDB1.conv1.0``, ...) is renamed on load
(``convert_esrgan_state_dict``). Spec fields: ``ngf`` = num_feat, ``n_blocks`` = num_block,
``num_grow_ch`` and ``scale`` (4; 2 and 1 unshuffle the input first, as BasicSR does).

The residual scalings (``x + 0.2 * out``) are written as ``torch.add(x, out, alpha=0.2)``: the same
arithmetic, one fused op, and no elementwise multiply for MAC counters to disagree about, so both
profile conventions give the convolutions' 1174.85G at a 256x256 input.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

RESIDUAL_SCALE = 0.2


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; the fifth maps back to ``num_feat``."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return torch.add(x, x5, alpha=RESIDUAL_SCALE)


class RRDB(nn.Module):
    """Residual in residual dense block: three RDBs and a scaled shortcut around them."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x, self.rdb3(self.rdb2(self.rdb1(x))), alpha=RESIDUAL_SCALE)


class RRDBNet(nn.Module):
    """LR RGB in [0, 1] -> HR RGB (x``scale``), unclamped like the reference; two nearest x2 upsamplings."""

    stride = 1

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet supports scale 1, 2 or 4, got {scale}")
        self.scale = scale
        self.unshuffle = {4: 1, 2: 2, 1: 4}[scale]  # BasicSR: x2 / x1 models unshuffle the input to 1/2, 1/4
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle ** 2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            if x.shape[-2] % self.unshuffle or x.shape[-1] % self.unshuffle:
                raise ValueError(f"rrdb x{self.scale} needs input sides divisible by {self.unshuffle}, "
                                 f"got {tuple(x.shape[-2:])}")
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


# ------------------------------------------------------------------------------------ foreign key layouts

_ESRGAN_TOP = {"model.0": "conv_first", "model.1.sub.{n}": "conv_body", "model.3": "conv_up1",
               "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}


def unwrap_basicsr(obj: dict) -> dict:
    """BasicSR / Real-ESRGAN releases wrap the state dict as ``{"params_ema": ...}`` or ``{"params": ...}``."""
    for key in ("params_ema", "params"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def is_esrgan_layout(state: dict[str, torch.Tensor]) -> bool:
    return "model.0.weight" in state and any(".sub." in k for k in state)


def convert_esrgan_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ESRGAN (``RRDB_ESRGAN_x4.pth``) keys -> BasicSR keys; other layouts pass unchanged."""
    if not is_esrgan_layout(state):
        return dict(state)
    n_sub = max(int(m.group(1)) for k in state if (m := re.match(r"model\.1\.sub\.(\d+)\.", k)))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", key)
        if m:
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
            continue
        m = re.match(r"(model\.\d+(?:\.sub\.\d+)?)\.(weight|bias)$", key)
        if m:
            prefix = m.group(1)
            name = "conv_body" if prefix == f"model.1.sub.{n_sub}" else _ESRGAN_TOP.get(prefix)
            if name is not None:
                out[f"{name}.{m.group(2)}"] = value
                continue
        out[key] = value  # unknown: left for the strict loader to name
    return out


def infer_rrdb_fields(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """num_feat, num_block, num_grow_ch and scale from a BasicSR-layout state dict's shapes."""
    first = state["conv_first.weight"]
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k))}
    in_ch = first.shape[1]
    scale = {3: 4, 12: 2, 48: 1}.get(in_ch, 4)
    return {"ngf": int(first.shape[0]), "n_blocks": len(blocks),
            "num_grow_ch": int(state["body.0.rdb1.conv1.weight"].shape[0]) if blocks else 32,
            "scale": scale, "input_nc": in_ch // {4: 1, 2: 4, 1: 16}[scale],
            "output_nc": int(state["conv_last.weight"].shape[0])}


def read_rrdb_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of a Real-ESRGAN / BasicSR (``params_ema`` / ``params``) or original ESRGAN file, in BasicSR
    key layout; ``.safetensors`` or a PyTorch pickle (read with ``weights_only``)."""
    from pathlib import Path

    from crdtool.errors import CrdError
    from crdtool.models.checkpoints import read_safetensors

    path = Path(path)
    if not path.is_file():
        raise CrdError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        state, _ = read_safetensors(path)
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # pickles fail in many ways; the user needs the file name and the reason
            raise CrdError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
        state = unwrap_basicsr(state) if isinstance(state, dict) else state
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CrdError(f"{path} does not hold an RRDBNet state dict (params_ema, params or plain tensors)")
        state = {k.removeprefix("module."): v for k, v in state.items()}
    state = convert_esrgan_state_dict(state)
    if "conv_first.weight" not in state:
        raise CrdError(f"{path} does not look like an RRDBNet (no 'conv_first.weight' or 'model.0.weight')")
    return {k: v.float() for k, v in state.items()}


def load_rrdb(path, spec=None) -> nn.Module:
    """An ``rrdb`` generator from a crdtool file, a Real-ESRGAN/BasicSR/ESRGAN release, in eval mode, fp32.

    Without ``spec`` a foreign file's num_feat / num_block / num_grow_ch / scale come from its shapes.
    """
    from pathlib import Path

    from crdtool.models.checkpoints import GENERATOR_FORMAT, load_generator, load_state_strict, read_safetensors
    from crdtool.models.registry import build_generator, family_spec

    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        _, meta = read_safetensors(path)
        if meta.get("format") == GENERATOR_FORMAT:
            return load_generator(path, spec)
    state = read_rrdb_state_dict(path)
    if spec is None:
        spec = family_spec("rrdb", **infer_rrdb_fields(state))
    model = build_generator(spec, init=False)
    load_state_strict(model, state, path)
    return model.eval()


# ------------------------------------------------------------------------------------ registry
from crdtool.models.registry import GeneratorSpec, register_family_defaults, register_generator  # noqa: E402


@register_generator("rrdb", default_norm="none")
def _rrdb(spec: GeneratorSpec) -> nn.Module:
    return RRDBNet(spec.input_nc, spec.output_nc, spec.scale, spec.ngf, spec.n_blocks, spec.num_grow_ch)


register_family_defaults("rrdb", stride=1, ngf=64, n_blocks=23, scale=4, num_grow_ch=32)

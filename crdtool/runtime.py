"""Device and precision decided in one place (cf. Lightning Fabric), then passed down.

``Runtime.create("auto")`` picks CUDA when present; bf16 autocast and channels_last are used on
CUDA only (on CPU they cost more than they save for these convnets).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from crdtool.errors import CrdError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def create(cls, device: str = "auto", precision: str = "auto", channels_last: str | bool = "auto",
               compile: bool = False) -> "Runtime":
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise CrdError(f"device {device!r} requested but no CUDA GPU is available; use device = \"cpu\" or \"auto\"")
        dev = torch.device(device)
        cuda = dev.type == "cuda"
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        if precision not in dtypes:
            raise CrdError(f"unknown precision {precision!r}; expected auto, fp32, bf16 or fp16")
        cl = cuda if channels_last == "auto" else bool(channels_last)
        return cls(dev, dtypes[precision], cl, compile)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def module(self, m: torch.nn.Module) -> torch.nn.Module:
        m = m.to(self.device)
        return m.to(memory_format=torch.channels_last) if self.channels_last else m

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last and t.dim() == 4 else t

    def describe(self) -> str:
        prec = "fp32" if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch.")
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "cpu"
        return f"{name} ({prec}{', channels_last' if self.channels_last else ''})"

"""Where and how training runs, decided in one place (cf. Lightning Fabric's connector), then passed down.

``Runtime.create`` reads the launcher's environment (torchrun's RANK, WORLD_SIZE, LOCAL_RANK) once
and picks this process's device from it; nothing else in crdtool reads those variables. The
Runtime then owns what depends on them: the process group (NCCL on CUDA, gloo on CPU), seeding,
CPU threads, DDP wrapping, gradient averaging across ranks, and backward/step with an fp16
GradScaler per optimizer. bf16 autocast and channels_last are used on CUDA only by default (on CPU
they cost more than they save for these convnets).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch

from crdtool.errors import CrdError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a (possibly multi-node) job, as the launcher describes it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by a launcher (torchrun): a process group even for one process


    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "RankInfo":
        values = {}
        for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            raw = env.get(key, "")
            try:
                values[key] = int(raw) if raw != "" else default
            except ValueError:
                raise CrdError(f"environment variable {key}={raw!r} is not an integer (set by the launcher, "
                               f"e.g. torchrun)") from None
        info = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], env.get("WORLD_SIZE", "") != "")
        if info.world_size < 1 or not 0 <= info.rank < info.world_size or info.local_rank < 0:
            raise CrdError(f"environment variables RANK={info.rank}, WORLD_SIZE={info.world_size}, "
                           f"LOCAL_RANK={info.local_rank} are inconsistent")
        return info


def select_device(requested: str, local_rank: int, world_size: int, cuda_count: int) -> str:
    """The device this rank trains on: a pure function of the request and the machine, so it is testable.

    ``"auto"``/``"cuda"`` give rank ``local_rank`` its own GPU ``cuda:<local_rank>``. Where each
    process sees exactly one GPU (a scheduler that sets CUDA_VISIBLE_DEVICES per task), that GPU is
    ``cuda:0``. An explicit ``"cuda:K"`` is honoured for one process only: with several, it would
    put every rank on the same GPU.
    """
    if requested == "auto":
        requested = "cuda" if cuda_count > 0 else "cpu"
    if requested == "cpu":
        return "cpu"
    if not requested.startswith("cuda"):
        raise CrdError(f"train.device {requested!r} is not supported; expected auto, cpu, cuda or cuda:N")
    if cuda_count == 0:
        raise CrdError(f"train.device {requested!r} requested but no CUDA GPU is available; "
                       f"use device = \"cpu\" or \"auto\"")
    if requested != "cuda":
        try:
            index = int(requested.split(":", 1)[1])
        except (IndexError, ValueError):
            raise CrdError(f"train.device {requested!r} is not a device; expected cuda or cuda:N") from None
        if world_size > 1:
            raise CrdError(f"train.device {requested!r} would put all {world_size} ranks on one GPU; "
                           f"use device = \"cuda\" or \"auto\" under torchrun (each rank takes cuda:LOCAL_RANK)")
        if index >= cuda_count:
            raise CrdError(f"train.device {requested!r} requested but only {cuda_count} CUDA GPU(s) are visible")
        return requested
    if cuda_count == 1:
        return "cuda:0"
    if local_rank >= cuda_count:
        raise CrdError(f"LOCAL_RANK {local_rank} but only {cuda_count} CUDA GPUs are visible on this node; "
                       f"use torchrun --nproc_per_node {cuda_count} or fewer")
    return f"cuda:{local_rank}"


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    ranks: RankInfo = field(default_factory=RankInfo)
    threads: int | None = None
    # one GradScaler per optimizer name, created on first use under fp16 (their state goes into checkpoints)
    scalers: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def create(cls, device: str = "auto", precision: str = "auto", channels_last: str | bool = "auto",
               compile: bool = False, threads: int | None = None, env: Mapping[str, str] | None = None,
               cuda_count: int | None = None) -> "Runtime":
        """``env`` defaults to ``os.environ`` (torchrun's variables) and ``cuda_count`` to the visible GPUs."""
        ranks = RankInfo.from_env(os.environ if env is None else env)
        if cuda_count is None:
            cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        dev = torch.device(select_device(device, ranks.local_rank, ranks.world_size, cuda_count))
        cuda = dev.type == "cuda"
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        if precision not in PRECISIONS:
            raise CrdError(f"unknown precision {precision!r}; expected auto, fp32, bf16 or fp16")
        cl = cuda if channels_last == "auto" else bool(channels_last)
        return cls(dev, PRECISIONS[precision], cl, compile, ranks, threads)

    @classmethod
    def for_training(cls, train: Any, env: Mapping[str, str] | None = None) -> "Runtime":
        """The runtime a recipe's [train] section asks for: device, precision, channels_last, compile, threads."""
        channels_last = {"auto": "auto", "on": True, "off": False}[train.channels_last]
        return cls.create(train.device, train.precision, channels_last, train.compile, threads=train.threads, env=env)

    # ------------------------------------------------------------------ where
    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and samples."""
        return self.ranks.rank == 0

    @property
    def distributed(self) -> bool:
        """Several ranks, or one under torchrun: then the DDP and NCCL/gloo path runs even on one GPU."""
        return self.ranks.world_size > 1 or self.ranks.launched

    @property
    def backend(self) -> str:
        return "nccl" if self.is_cuda else "gloo"

    def setup(self) -> None:
        """Threads, this rank's GPU and the process group; idempotent, call before building models."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.is_cuda:
            torch.cuda.set_device(self.device)
        if self.distributed:
            import torch.distributed as dist

            if not dist.is_initialized():
                # env:// rendezvous: torchrun sets MASTER_ADDR/MASTER_PORT (also across nodes)
                dist.init_process_group(self.backend, rank=self.rank, world_size=self.world_size)

    def seed_everything(self, seed: int) -> None:
        """The same seed on every rank: identical initial weights; ranks differ only in their data shard."""
        random.seed(seed)
        try:
            import numpy as np

            np.random.seed(seed % 2**32)
        except ImportError:  # numpy is a dependency, but seeding must not be the place that requires it
            pass
        torch.manual_seed(seed)  # also seeds every CUDA device

    # ------------------------------------------------------------------ placement
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
        ranks = f", rank {self.rank} of {self.world_size} ({self.backend})" if self.distributed else ""
        return f"{name} ({prec}{', channels_last' if self.channels_last else ''}{ranks})"

    # ------------------------------------------------------------------ data parallel
    def wrap_ddp(self, m: torch.nn.Module) -> torch.nn.Module:
        """``m`` in DDP on several ranks (this rank's GPU as its only device), ``m`` itself on one."""
        if not self.distributed:
            return m
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        # buffers (BatchNorm running statistics) stay per rank between steps; newer torch renamed the switch
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else {"broadcast_buffers": False})
        return DDP(m, device_ids=[self.device.index] if self.is_cuda else None, **no_sync)

    def broadcast_module(self, m: torch.nn.Module) -> None:
        """Rank 0's weights and buffers on every rank."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for t in m.state_dict().values():
            dist.broadcast(t, 0)

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average gradients across ranks with one collective (what DDP does, for modules it cannot wrap)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view(g.shape))
            offset += n

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (e.g. a stop signal seen by one rank)."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.is_cuda else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (picklable), as a list on rank 0 and None elsewhere."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    # ------------------------------------------------------------------ optimisation
    def _scaler(self, name: str):
        if self.autocast_dtype is not torch.float16:
            return None
        if name not in self.scalers:
            self.scalers[name] = torch.amp.GradScaler(self.device.type)
        return self.scalers[name]

    def backward_step(self, name: str, opt: torch.optim.Optimizer, loss: torch.Tensor,
                      all_reduce: bool | Iterable[torch.nn.Parameter] = False) -> None:
        """zero_grad, backward, (average across ranks), step: with loss scaling under fp16.

        ``all_reduce``: True averages every parameter of ``opt``; an iterable, only those (the ones a DDP
        wrapper does not already average).

        Gradients are averaged while still scaled (averaging is linear), so an inf/NaN on any rank
        reaches every rank and all of them skip the step together.
        """
        opt.zero_grad(set_to_none=True)
        scaler = self._scaler(name)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        reduce = [p for g in opt.param_groups for p in g["params"]] if all_reduce is True else list(all_reduce or [])
        if reduce:
            self.all_reduce_grads(reduce)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()

    def scaler_state(self) -> dict[str, dict[str, Any]]:
        return {name: s.state_dict() for name, s in self.scalers.items()}

    def load_scaler_state(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        for name, st in states.items():
            scaler = self._scaler(name)
            if scaler is not None:
                scaler.load_state_dict(dict(st))

"""Facts about the machine a measurement ran on: CPU model and flags, cores, GPU, library versions, command."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from crdtool.versions import library_versions  # noqa: F401  (re-exported: results files record it)


def physical_cores() -> int:
    """Physical cores available to this process (the default thread count for torch and onnxruntime)."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, val = line.partition(":")
            key, val = key.strip(), val.strip()
            if key == "physical id":
                phys = val
            elif key == "core id":
                core = val
            elif not line.strip() and core:
                cores.add((phys, core))
                phys = core = ""
    except OSError:
        pass
    return max(1, min(logical, len(cores) if cores else logical))


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.processor(), platform.machine()):
                model = val.strip()
            elif key.strip() == "flags" and not flags:
                have = set(val.split())
                flags = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
                         if f in have]
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": flags, "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
            "machine": platform.machine(), "os": platform.platform(terse=True)}


def device_info(device_type: str, threads: int | None) -> dict[str, Any]:
    info = {**cpu_info(), "threads": threads, "device": device_type}
    if device_type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def current_command() -> str:
    prog = Path(sys.argv[0]).name if sys.argv else "python"
    if prog in ("__main__.py", "-c", ""):
        prog = "python -m " + (sys.modules["__main__"].__spec__.name if getattr(sys.modules.get("__main__"), "__spec__",
                                                                                None) else "?")
    elif prog.endswith(".py"):
        prog = "python " + os.path.relpath(sys.argv[0])
    return " ".join([prog, shlex.join(sys.argv[1:])]).strip()


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None

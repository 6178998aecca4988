"""What a distillation run reports when it returns (both the GAN loop and the SR trainer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class DistillResult:
    run_dir: Path
    student_path: Path
    teacher_path: Path
    steps: int
    student_steps: int
    last_eval: dict[str, Any] | None
    first_eval: dict[str, Any] | None
    interrupted: bool = False
    seconds: float = 0.0
    already_finished: bool = False  # resumed a run that had nothing left to do; nothing was written
    resumed_from: int | None = None  # the step a resumed run continued from
    rank: int = 0  # this process's rank: only rank 0 reports a run to people

"""A run's metrics.jsonl: one JSON row per evaluation, teacher score and ``LOG_EVERY`` steps of losses.

Only rank 0 writes; every rank builds the same rows, so the code paths do not depend on the rank.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from crdtool.train.schedule import Progress

LOG_EVERY = 20


class RunLog:
    def __init__(self, run_dir: Path, progress: Progress, is_main: bool):
        self.path, self.progress, self.is_main = Path(run_dir) / "metrics.jsonl", progress, is_main
        self._running: dict[str, float] = {}
        self._running_n = 0

    def write(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` stamped with the step counters and the time; returned as written."""
        row = {"step": self.progress.step, "student_step": self.progress.student_steps, "time": time.time(), **row}
        if self.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    def track(self, losses: dict[str, float]) -> None:
        """Add one step's losses; every ``LOG_EVERY`` steps their means become a "train" row."""
        for k, v in losses.items():
            self._running[k] = self._running.get(k, 0.0) + v
        self._running_n += 1
        if self.progress.step % LOG_EVERY == 0 and self._running_n:
            self.write({"kind": "train", **{k: v / self._running_n for k, v in self._running.items()}})
            self._running, self._running_n = {}, 0

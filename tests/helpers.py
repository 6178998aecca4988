"""Tiny recipes for tests: synthetic 32 px data, generators a few channels wide."""

from __future__ import annotations

import copy
from pathlib import Path

from crdtool.recipe import Recipe, parse_recipe

TINY = {
    "name": "tiny",
    "task": "cyclegan",
    "seed": 0,
    "data": {"layout": "unaligned", "load_size": 36, "crop_size": 32, "batch_size": 1, "eval_images": 4,
             "synth": {"kind": "unpaired", "size": 32, "count": 16, "seed": 0}},
    "teacher": {"arch": "resnet", "ngf": 4, "n_blocks": 2},
    "student": {"arch": "mobile_resnet", "ngf": 2, "n_blocks": 2},
    "discriminator": {"ndf": 4},
    "loss": {"patch_size": 8},
    "train": {"teacher_epochs": 1, "teacher_epochs_decay": 1, "round_epochs": 1, "student_epochs_per_round": 1,
              "eval_every": 1000, "checkpoint_every": 1000, "device": "cpu", "pool_size": 4},
}


def tiny_recipe(tmp_path: Path, data_root: Path | None = None, **sections) -> Recipe:
    """A valid tiny recipe writing into ``tmp_path``; ``sections`` deep-update TINY (e.g. train={...})."""
    d = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key].update(value)
        else:
            d[key] = value
    d["data"]["root"] = str(data_root or tmp_path / "data")
    d["output_dir"] = str(tmp_path / "run")
    return parse_recipe(d, "tiny.toml", tmp_path)

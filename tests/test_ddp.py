"""Data parallel distillation: 2 CPU processes with gloo via torchrun, and the per-rank data shards."""

import json
import os
import subprocess
import sys
from pathlib import Path

from crdtool.data import EpochBatchSampler
from crdtool.train.state import latest_checkpoint, load_checkpoint
from tests.helpers import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_ranks_get_disjoint_equal_shards():
    shards = [list(EpochBatchSampler(11, 2, True, seed=3, epoch=1, keyed=False, rank=r, world_size=2))
              for r in range(2)]
    flat = [[i for b in s for i in b] for s in shards]
    assert len(shards[0]) == len(shards[1]) == 2  # 11 // 2 = 5 samples per rank -> 2 full batches
    assert not set(flat[0]) & set(flat[1])


def test_torchrun_two_cpu_processes(tmp_path):
    small = {"kind": "unpaired", "size": 32, "count": 8, "seed": 0}
    r = tiny_recipe(tmp_path, data={"synth": small}, train={"max_steps": 4, "checkpoint_every": 1000})
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(r.to_toml())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CRDTOOL_QUIET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "crdtool", "distill", str(recipe)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    # 8 images over 2 ranks = 4 steps per epoch: teacher epoch (4) + 4 student steps
    assert ckpt.state["progress"]["student_steps"] == 4 and ckpt.state["progress"]["step"] == 8
    assert ckpt.state["fingerprint"]["world_size"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if row["kind"] == "eval"]
    assert len(evals) == 2, "only rank 0 logs (one eval at the start, one at the end)"

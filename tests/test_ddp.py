"""Data parallel distillation: 2 CPU processes with gloo via torchrun, and the per-rank data shards."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from crdtool.data import EpochBatchSampler
from crdtool.train.state import latest_checkpoint, load_checkpoint
from tests.helpers import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 8  # 8 images over 2 ranks at batch 1: 4 steps per epoch; 2 teacher + 2 student epochs = 16 steps


def test_ranks_get_disjoint_equal_shards():
    shards = [list(EpochBatchSampler(11, 2, True, seed=3, epoch=1, keyed=False, rank=r, world_size=2))
              for r in range(2)]
    flat = [[i for b in s for i in b] for s in shards]
    assert len(shards[0]) == len(shards[1]) == 2  # 11 // 2 = 5 samples per rank -> 2 full batches
    assert not set(flat[0]) & set(flat[1])


def _torchrun(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_runner.py"), str(tmp / "tiny.toml"), str(tmp / "log"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _job(tmp: Path) -> Path:
    small = {"kind": "unpaired", "size": 32, "count": IMAGES, "seed": 0}
    r = tiny_recipe(tmp, data={"synth": small}, train={"checkpoint_every": 3})
    (tmp / "tiny.toml").write_text(r.to_toml())
    (tmp / "log").mkdir()
    return tmp / "run"


def _rows(tmp: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (tmp / "log" / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """One uninterrupted 2-rank run of the tiny schedule (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("ddp-full")
    _job(tmp)
    out = _torchrun(tmp, "--cli")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp


@pytest.mark.slow
def test_torchrun_two_cpu_processes_each_sample_once_per_epoch(full_run):
    ckpt = load_checkpoint(latest_checkpoint(full_run / "run"))
    assert ckpt.state["progress"]["step"] == 16 and ckpt.state["progress"]["student_steps"] == 8
    assert ckpt.state["fingerprint"]["world_size"] == 2
    seen = {rank: [tuple(row["sample"]) for row in _rows(full_run, rank) if "sample" in row] for rank in (0, 1)}
    assert len(seen[0]) == len(seen[1]) == 16
    per_epoch = Counter(epoch for rank in (0, 1) for epoch, _ in seen[rank])
    assert len(per_epoch) == 4, per_epoch  # teacher epochs 0, 1 and student epochs 0, 1 (their own keys)
    for epoch in per_epoch:
        indices = [i for rank in (0, 1) for e, i in seen[rank] if e == epoch]
        assert sorted(indices) == list(range(IMAGES)), f"epoch {epoch}: every sample exactly once across ranks"
        mine = [{i for e, i in seen[rank] if e == epoch} for rank in (0, 1)]
        assert len(mine[0]) == len(mine[1]) == IMAGES // 2


@pytest.mark.slow
def test_torchrun_only_rank0_writes(full_run):
    writes = {rank: Counter(row["write"] for row in _rows(full_run, rank) if "write" in row) for rank in (0, 1)}
    assert writes[1] == Counter(), "rank 1 wrote files"
    assert writes[0]["save_checkpoint"] >= 4 and writes[0]["write_bytes_atomic"] == 1
    rows = [json.loads(line) for line in (full_run / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if row["kind"] == "eval"]
    assert len(evals) == 2, "only rank 0 logs (one eval at the start, one at the end)"


@pytest.mark.slow
def test_torchrun_only_rank0_prints_progress_and_summary(full_run):
    printed = {rank: (full_run / "log" / f"rank{rank}.out").read_text() for rank in (0, 1)}
    assert printed[1] == "", "rank 1 printed"
    lines = printed[0].splitlines()
    assert lines[0].startswith("distill tiny: teacher") and "rank 0 of 2 (gloo)" in lines[0]
    assert [ln for ln in lines if ln.startswith("distill: ")][-1].startswith("distill: 100% 16/16 [")
    assert "distill tiny: 16 steps (8 student)" in printed[0] and "student vs teacher" in printed[0]


@pytest.mark.slow
def test_torchrun_resumes_after_a_kill_with_the_same_weights(full_run, tmp_path):
    run = _job(tmp_path)
    killed = _torchrun(tmp_path, "--kill-at", "12")  # second teacher epoch; image pools are full, per rank
    assert killed.returncode != 0
    # checkpoints at the end of each phase (step 8) and every 3 steps since: resume mid-epoch from step 11
    assert load_checkpoint(latest_checkpoint(run)).state["progress"]["step"] == 11
    resumed = _torchrun(tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_checkpoint(latest_checkpoint(full_run / "run"))
    b = load_checkpoint(latest_checkpoint(run))
    assert a.state["progress"] == b.state["progress"]
    assert a.weights.keys() == b.weights.keys()
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k

"""Runtime: rank -> device, the launcher's environment read in one place, fp16 loss scaling and its checkpoint state."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crdtool.distill import prepare_data
from crdtool.errors import CrdError
from crdtool.runtime import RankInfo, Runtime, select_device
from crdtool.train.loop import Distiller
from crdtool.train.state import latest_checkpoint, load_checkpoint
from tests.helpers import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("requested, local_rank, world, gpus, expected", [
    ("auto", 0, 1, 0, "cpu"),
    ("auto", 1, 2, 0, "cpu"),            # gloo on CPU: no GPU needed
    ("auto", 0, 1, 1, "cuda:0"),
    ("auto", 3, 4, 4, "cuda:3"),         # torchrun --nproc_per_node 4: rank 3 on its own GPU
    ("cuda", 1, 8, 2, "cuda:1"),         # second node of a 2 x 2 job: LOCAL_RANK, not RANK
    ("cuda", 2, 4, 1, "cuda:0"),         # one visible GPU per process (CUDA_VISIBLE_DEVICES per task)
    ("cuda:1", 0, 1, 2, "cuda:1"),       # an explicit GPU for a single process
    ("cpu", 1, 2, 4, "cpu"),
])
def test_each_rank_gets_its_own_device(requested, local_rank, world, gpus, expected):
    assert select_device(requested, local_rank, world, gpus) == expected


@pytest.mark.parametrize("requested, local_rank, world, gpus, message", [
    ("cuda", 0, 1, 0, "no CUDA GPU"),
    ("cuda", 4, 5, 4, "LOCAL_RANK 4 but only 4"),
    ("cuda:1", 1, 2, 2, "all 2 ranks on one GPU"),
    ("cuda:2", 0, 1, 2, "only 2 CUDA GPU"),
    ("tpu", 0, 1, 0, "not supported"),
])
def test_device_choices_that_cannot_work_are_one_line_errors(requested, local_rank, world, gpus, message):
    with pytest.raises(CrdError, match=message):
        select_device(requested, local_rank, world, gpus)


def test_ranks_come_from_the_launcher_environment():
    rt = Runtime.create("auto", env={"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, cuda_count=0)
    assert (rt.rank, rt.world_size, rt.ranks.local_rank, rt.is_main, rt.backend) == (5, 8, 1, False, "gloo")
    assert RankInfo.from_env({}) == RankInfo(0, 1, 0) and not Runtime.create("cpu", env={}).distributed
    # torchrun --nproc_per_node 1 still takes the process-group/DDP path (the 1-GPU smoke run relies on it)
    assert Runtime.create("cpu", env={"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}).distributed
    with pytest.raises(CrdError, match="RANK='x'"):
        RankInfo.from_env({"RANK": "x"})
    with pytest.raises(CrdError, match="inconsistent"):
        RankInfo.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_distiller_reads_no_environment_variables(tmp_path, monkeypatch):
    """The Runtime passed in decides the rank; the Distiller must not look at torchrun's variables itself."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    r = tiny_recipe(tmp_path)
    prepare_data(r)
    d = Distiller(r, runtime=Runtime.create("cpu", "fp32", env={}))
    assert d.is_main and d.checkpoints.fingerprint["world_size"] == 1
    assert d.fwd["student"] is d.student  # not DDP-wrapped


def test_no_private_torch_helpers():
    """torch._utils (e.g. _flatten_dense_tensors) is private and may change under us."""
    hits = [str(p.relative_to(ROOT)) for p in (ROOT / "crdtool").rglob("*.py") if "torch._utils" in p.read_text()]
    assert not hits


def test_fp16_scales_the_loss_and_skips_a_step_with_inf_gradients():
    torch.manual_seed(0)
    rt = Runtime.create("cpu", "fp16", env={})
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    expected = model.weight.detach() - 0.1 * torch.autograd.grad(model(x).pow(2).mean(), model.weight)[0]
    rt.backward_step("opt", opt, model(x).pow(2).mean())
    assert set(rt.scalers) == {"opt"}
    torch.testing.assert_close(model.weight.detach(), expected)  # the scale was removed before the step
    before = model.weight.detach().clone()
    scale = rt.scalers["opt"].get_scale()
    rt.backward_step("opt", opt, model(x).sum() * float("inf"))
    assert torch.equal(model.weight.detach(), before)  # skipped
    assert rt.scalers["opt"].get_scale() == scale / 2  # and backed off
    assert Runtime.create("cpu", "bf16", env={}).scalers == {}


def test_fp16_scaler_state_round_trips_through_a_checkpoint(tmp_path):
    r = tiny_recipe(tmp_path, train={"precision": "fp16", "max_steps": 3})
    prepare_data(r)
    d = Distiller(r, runtime=Runtime.create("cpu", "fp16", env={}))
    d.run()
    saved = load_checkpoint(latest_checkpoint(d.run_dir)).state["grad_scalers"]
    assert set(saved) == {"opt_S", "opt_G", "opt_D"}
    # fp16 overflows of these tiny nets backed the scales off from 2**16: state worth keeping
    assert saved["opt_G"]["_growth_tracker"] > 0 and any(st["scale"] != 2.0 ** 16 for st in saved.values())
    again = Distiller(r, runtime=Runtime.create("cpu", "fp16", env={}))
    again.checkpoints.restore(latest_checkpoint(d.run_dir))
    assert again.rt.scaler_state() == saved == d.rt.scaler_state()


def _gloo_rank(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # what torchrun would set
    rt = Runtime.create("cpu", "fp32", env={"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
    rt.setup()
    p = torch.nn.Parameter(torch.zeros(3, 2))
    p.grad = torch.full((3, 2), float(rank + 1))
    q = torch.nn.Parameter(torch.zeros(4))
    q.grad = torch.arange(4.0) * (rank + 1)
    rt.all_reduce_grads([p, q])
    result = {"p": p.grad, "q": q.grad, "stop": rt.any_rank(rank == 1), "gathered": rt.gather_to_main({"r": rank})}
    torch.save(result, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~10-30 s
def test_two_gloo_ranks_average_gradients_stop_together_and_gather_on_rank0(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_gloo_rank, args=(port, tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{k}.pt") for k in (0, 1))
    for r in (r0, r1):
        assert torch.equal(r["p"], torch.full((3, 2), 1.5)) and torch.equal(r["q"], torch.arange(4.0) * 1.5)
        assert r["stop"] is True  # only rank 1 saw the "signal"; both stop
    assert r0["gathered"] == [{"r": 0}, {"r": 1}] and r1["gathered"] is None

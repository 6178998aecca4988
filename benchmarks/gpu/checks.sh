#!/usr/bin/env bash
# Every GPU measurement and check crdtool has, in one prepared run that fits in about 15 minutes.
#
# Once, on a machine with network:  bash benchmarks/gpu/fetch_wheels.sh   # pydantic & co. into .whl/ (git-ignored)
# On the GPU machine:               bash benchmarks/gpu/checks.sh          # with .whl/ copied alongside
# Check it on a CPU:                SMOKE=1 bash benchmarks/gpu/checks.sh  # same steps, tiny sizes, /tmp output
#
# Writes benchmarks/results/{distill_step,crd_loss,latency}-<gpu>.* and copies them, with the log, to
# $OUT after every step when $OUT is set (so what finished survives a timeout). A failing step is
# logged and the next one runs. Steps can be named to run only those:
#   bash benchmarks/gpu/checks.sh distill_step ddp
# Steps: env; ddp (torchrun with one process per GPU on GPU 0: NCCL process group, DDP student,
# gradient all-reduce, checkpoint; ~1 min); distill_step (~4 min, mostly torch.compile);
# crd_loss (~1 min); latency (~2 min). Times are estimates for an H200, not yet measured there.
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ -z "${SMOKE:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if [ -n "${SMOKE:-}" ]; then
  DEV=cpu RESULTS=${RESULTS:-/tmp/crdtool-gpu-smoke}
  DISTILL=(--device cpu --size 32 --rounds 1 --steps 1 --warmup 1 --no-compile)
  CRD=(--device cpu --repeats-fast 1 --repeats-literal 1)
  BENCH=(-b torch-cpu --size 64 --runs 3 --warmup 1)
else
  DEV=cuda RESULTS=${RESULTS:-benchmarks/results}
  DISTILL=(--device cuda)
  CRD=(--device cuda)
  BENCH=(-b torch-cuda -b torch-cuda:bf16 -b torch-cuda-graph:bf16 --size 256 --runs 300)
fi
mkdir -p "$RESULTS"
NAME=$($PY - "$DEV" <<'EOF'
import sys, torch
dev = sys.argv[1]
if dev == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch " + torch.__version__)
name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
print("".join(c if c.isalnum() else "-" for c in name.lower()).strip("-"))
EOF
) || exit 1
LOG="$RESULTS/gpu-checks-$NAME.log"
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }
WANT=" ${*:-env ddp distill_step crd_loss latency} "
step() {  # step NAME LIMIT_S CMD...: run with a time limit, log it, never stop the script
  local name=$1 limit=$2; shift 2
  [[ "$WANT" == *" $name "* ]] || return 0
  say "== $name ($(date -u +%H:%M:%S)): $*"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "== $name: rc $rc"
  if [ -n "${OUT:-}" ]; then  # bring back what exists so far
    cp "$LOG" "$OUT"/
    cp "$RESULTS"/*-"$NAME".json "$RESULTS"/*-"$NAME".md "$OUT"/ 2>/dev/null || true
  fi
}

say "crdtool GPU checks, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), device $NAME"
step env 60 $PY -c "import torch, onnxruntime, pydantic; print(torch.__version__, torch.version.cuda, onnxruntime.__version__, pydantic.__version__)"
# torchrun on one GPU: the multi-GPU code path (rank -> cuda:LOCAL_RANK, NCCL, DDP) on a tiny recipe
SMOKE_RUN=$(mktemp -d)
step ddp 240 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m crdtool distill \
  crdtool/recipes/quickstart.toml --device "$DEV" --max-steps 8 \
  --set "output_dir=\"$SMOKE_RUN/run\"" --set "data.root=\"$SMOKE_RUN/data\"" --set data.synth.count=8 \
  --set data.synth.size=32 --set data.load_size=36 --set data.crop_size=32 --set train.round_epochs=1
step ddp 60 $PY -c "import json, sys; print(json.load(open(sys.argv[1])))" "$SMOKE_RUN/run/checkpoints/latest.json"
step distill_step 360 $PY benchmarks/distill_step.py "${DISTILL[@]}" --out "$RESULTS"
step crd_loss 120 $PY benchmarks/crd_loss.py "${CRD[@]}" --out "$RESULTS/crd_loss-$NAME.json"
step latency 150 $PY -m crdtool bench recipes/h2z.toml --compare "${BENCH[@]}" \
  --json "$RESULTS/latency-$NAME.json" --md "$RESULTS/latency-$NAME.md"

[ -n "${OUT:-}" ] && ls -l "$OUT"
exit 0

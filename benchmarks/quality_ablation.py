"""Quality ablation: does the paper's ordering hold on real images at a reduced, equal budget?

The paper (horse2zebra FID): CRD 46.61 < instance-level RKD 63.93 < no distillation 96.72, and the
frozen online discriminator (46.61) beats an always-updated one (58.02) and none (62.75). Here, per
dataset: one CycleGAN teacher trained once and cached, then five student arms x N seeds, all with the
same student architecture, the same number of student epochs (so the same images seen) and the same
seeds, each scored with FID and KID (TF-Inception) against the real target-domain test images and
with PSNR/SSIM against the teacher. Arms (overrides of ``recipes/ablation/<dataset>-<scale>.toml``):

  no_kd          the student architecture trained alone as a CycleGAN (no teacher), same epochs
  instance_rkd   RKD between whole images of a batch of 4 (same epochs: 1/4 of the steps, same images)
  crd            CRD with the online discriminator frozen for the student (the paper)
  crd_d_updated  CRD, the discriminator also learns from the student's outputs
  crd_no_d       CRD, no adversarial term for the student

Budget rule: every arm sees the same number of training images (epochs x train set), with the same
per-epoch learning-rate schedule; only instance_rkd takes them 4 per step. The discriminator of the
student arms starts from the cached teacher's trained D_A (``--d-init teacher``), as in the paper
where it co-evolves with the teacher; it keeps learning real B vs teacher output in every step.

FID protocol: every test image of domain A is translated at the training resolution; the real
testB images are resized to that same resolution (bicubic, as the loader does) before Inception's
299 px resize, so both sides go through the same resampling. KID: 100 subsets of 50 (its std over
subsets is reported). References per dataset: the teacher, the untranslated inputs (testA vs
testB) and a real-vs-real floor (trainB vs testB, same n).

    python benchmarks/quality_ablation.py --scale cpu                  # photo2anime + cat2dog, 3 seeds
    python benchmarks/quality_ablation.py --scale gpu --jobs 1         # 256 px, on a GPU

Resumable: a finished run (trained.json / eval.json) is skipped, an interrupted one resumes from its
checkpoint. Writes benchmarks/results/quality_ablation-<dataset>-<scale>.{json,md,png} and
benchmarks/results/quality_ablation-README-snippet.md from the measured numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULT_FORMAT = "crdtool.quality-ablation"
RESULT_VERSION = 1
DATASETS = ("photo2anime", "cat2dog")
SCALES = ("cpu", "gpu")
LOG_EVERY = 500  # steps between progress lines

# name -> (label, overrides of the base recipe); "no_kd" is handled specially (trained as a CycleGAN)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "no_kd": ("no distillation (student arch as a CycleGAN)", {}),
    "instance_rkd": ("instance-level RKD (batch 4)", {"loss.kd": "instance_rkd", "data.batch_size": 4,
                                                      "discriminator.student": "frozen"}),
    "crd": ("CRD, frozen D (paper)", {"loss.kd": "crd", "discriminator.student": "frozen"}),
    "crd_d_updated": ("CRD, D always updated", {"loss.kd": "crd", "discriminator.student": "updated"}),
    "crd_no_d": ("CRD, no D for the student", {"loss.kd": "crd", "discriminator.student": "none"}),
}
PAPER_H2Z_FID = {"crd": 46.61, "instance_rkd": 63.93, "no_kd": 96.72, "crd_d_updated": 58.02, "crd_no_d": 62.75}
# (better, worse, text): the paper claims FID(better) < FID(worse)
CLAIMS = [
    ("crd", "instance_rkd", "CRD < instance-level RKD"),
    ("instance_rkd", "no_kd", "instance-level RKD < no distillation"),
    ("crd", "no_kd", "CRD < no distillation"),
    ("crd", "crd_d_updated", "frozen D < always-updated D"),
    ("crd", "crd_no_d", "frozen D < no D"),
]
CLEAR = 2.0  # |difference| >= CLEAR x pooled seed std counts as clear; below it, within seed noise


@dataclass
class Settings:
    scale: str = "cpu"
    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    data_root: Path | None = None  # folder holding <dataset>/; None = each base recipe's data.root
    runs_root: Path = ROOT / "runs" / "quality_ablation"
    results_dir: Path = ROOT / "benchmarks" / "results"
    recipes_dir: Path = ROOT / "recipes" / "ablation"
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every run (e.g. smoke sizes)
    subset: int | None = None  # smoke runs: first N images of each train/test folder (symlinked view)
    jobs: int = 1
    threads: int = 1
    inception: Path | None = None  # None = crdtool.metrics.fid.default_inception_path()
    random_inception: bool = False  # tests only: random weights, right structure
    fid_sqrtm: bool = True  # False (tests): report the exact low-rank FID only, skipping ~10 s sqrtm per score
    kid_subsets: int = 100
    kid_subset_size: int = 50
    grid_rows: int = 6
    d_init: str = "teacher"  # "teacher": student arms start D_A from the cached teacher's; "scratch"
    log_every: int = LOG_EVERY
    write_snippet: bool = True


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _clean(obj: Any) -> Any:
    """Strict JSON: NaN/inf (e.g. a std over one seed) become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _unclean(obj: Any) -> Any:
    """Inverse of ``_clean`` for numbers read back from a results file: null -> nan."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _unclean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unclean(v) for v in obj]
    return obj


def _write_json(path: Path, obj: Any) -> None:
    from crdtool.fileio import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, _clean(obj))


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- recipes


def base_recipe_path(s: Settings, dataset: str) -> Path:
    return s.recipes_dir / f"{dataset}-{s.scale}.toml"


def _source_root(s: Settings, dataset: str) -> Path:
    if s.data_root is not None:
        return (Path(s.data_root) / dataset).resolve()
    from crdtool.recipe import load_recipe

    return load_recipe(base_recipe_path(s, dataset)).data.root


def data_root(s: Settings, dataset: str) -> Path:
    """The dataset folder, or for smoke runs a view of its first ``subset`` images per folder (symlinks)."""
    src = _source_root(s, dataset)
    if s.subset is None:
        return src
    from crdtool.data.images import list_images

    view = s.runs_root / "subsets" / f"{dataset}-{s.subset}"
    for folder in ("trainA", "trainB", "testA", "testB"):
        (view / folder).mkdir(parents=True, exist_ok=True)
        for f in list_images(src / folder)[:s.subset]:
            link = view / folder / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return view


def _common(s: Settings, dataset: str) -> dict[str, Any]:
    return {"data.root": str(data_root(s, dataset)), **s.overrides}


def teacher_recipe(s: Settings, dataset: str):
    """The cached teacher: an online CycleGAN with no student rounds, in a folder keyed by its settings."""
    from crdtool.recipe import load_recipe

    r = load_recipe(base_recipe_path(s, dataset), {**_common(s, dataset), "seed": 0})
    total = r.train.teacher_epochs + r.train.teacher_epochs_decay
    key = {"teacher": r.teacher.spec().to_dict(), "disc": r.discriminator.model_dump(mode="json", exclude={"checkpoint"}),
           "data": r.data.model_dump(mode="json", exclude={"eval_images", "num_workers"}),
           "loss": [r.loss.lambda_cycle, r.loss.lambda_identity],
           "train": [r.train.teacher_epochs, r.train.teacher_epochs_decay, r.train.lr, r.train.pool_size],
           "subset": s.subset}
    out = s.runs_root / "cache" / f"teacher-{dataset}-{s.scale}-{_digest(key)}"
    return load_recipe(base_recipe_path(s, dataset), {
        **_common(s, dataset), "seed": 0, "name": f"{r.name}-teacher", "output_dir": str(out),
        "train.round_epochs": max(1, total), "train.student_epochs_per_round": 0, "train.teacher_select": "last"})


def arm_recipe(s: Settings, dataset: str, arm: str, seed: int, teacher_dir: Path):
    from crdtool.recipe import load_recipe

    base = load_recipe(base_recipe_path(s, dataset), _common(s, dataset))
    teacher_dir = Path(teacher_dir).resolve()  # results record it relative to the working folder; recipes resolve
    out = s.runs_root / s.scale / dataset / f"{arm}-s{seed}"
    ov = {**_common(s, dataset), "seed": seed, "name": f"{base.name}-{arm}-s{seed}", "output_dir": str(out)}
    if arm == "no_kd":  # the student architecture alone, as an online CycleGAN, for the student's epochs
        n = base.train.student_epochs
        st = base.student
        ov.update({"teacher.arch": st.arch, "teacher.ngf": st.ngf, "teacher.n_blocks": st.n_blocks,
                   "train.teacher_epochs": n // 2, "train.teacher_epochs_decay": n - n // 2,
                   "train.round_epochs": max(1, n), "train.student_epochs_per_round": 0,
                   "train.teacher_select": "last"})
    else:
        ov.update(ARMS[arm][1])
        ov["teacher.checkpoint"] = str(teacher_dir / "teacher.safetensors")
        if s.d_init == "teacher":  # start D_A from the teacher run's trained one, as in the paper
            ov["discriminator.checkpoint"] = str(teacher_dir)
    return load_recipe(base_recipe_path(s, dataset), ov)


# ----------------------------------------------------------------------------- training


def train_run(recipe, tag: str, log_every: int = LOG_EVERY) -> dict[str, Any]:
    """Train one recipe to the end (resuming a checkpointed partial run); ``trained.json`` marks it done."""
    from crdtool.train import state as ckpt
    from crdtool.train.loop import Distiller

    run_dir = Path(recipe.run_dir)
    marker = run_dir / "trained.json"
    done = _read_json(marker)
    if done is not None:
        return done
    resume = run_dir.is_dir() and ckpt.latest_checkpoint(run_dir) is not None
    if run_dir.is_dir() and not resume:
        shutil.rmtree(run_dir)  # a run killed before its first checkpoint: start over
    start = time.time()
    total = [0]

    def on_progress(info: dict[str, Any]) -> None:
        if info["step"] % log_every == 0:
            el = time.time() - start
            log(f"{tag}: step {info['step']}/{total[0]} ({el / 60:.1f} min)")

    dist = Distiller(recipe, on_progress=on_progress)
    total[0] = dist.total_steps()
    d_from_teacher = dist.D_A is not None and recipe.discriminator.checkpoint is not None
    log(f"{tag}: {'resuming' if resume else 'training'} ({total[0]} steps)")
    res = dist.run(resume=resume)
    if res.interrupted:
        raise SystemExit(f"{tag}: interrupted; rerun the same command to resume")
    online = recipe.teacher.checkpoint is None
    info = {"steps": res.steps, "student_steps": res.student_steps,
            "generator_steps": res.steps if online else res.student_steps,
            "batch_size": recipe.data.batch_size, "train_seconds": res.seconds,
            "d_init": "teacher" if d_from_teacher else "scratch", "resumed": resume}
    info["images_seen"] = info["generator_steps"] * recipe.data.batch_size
    _write_json(marker, info)
    log(f"{tag}: trained in {info['train_seconds'] / 60:.1f} min")
    return info


# ----------------------------------------------------------------------------- evaluation

_INCEPTION: dict[str, Any] = {}


def inception(s: Settings):
    key = "random" if s.random_inception else str(s.inception)
    if key not in _INCEPTION:
        from crdtool.metrics import fid as F

        _INCEPTION[key] = F.build_inception() if s.random_inception else F.load_inception(s.inception)
    return _INCEPTION[key]


def _inception_name(s: Settings) -> str:
    from crdtool.errors import CrdError
    from crdtool.metrics import fid as F

    if s.random_inception:
        return "random (test only)"
    try:
        return F.resolve_inception_path(s.inception).name
    except CrdError:
        return "unavailable"


def eval_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_split(root: Path, phase: str, domain: str, size: int, n: int | None = None):
    """(N, 3, size, size) in [-1, 1]: every image of ``root/<phase><domain>`` resized like the test loader."""
    import torch

    from crdtool.data import build_dataset

    ds = build_dataset("unaligned", root, phase, load_size=size, crop_size=size, train=False)
    files = ds.files_A if domain == "A" else ds.files_B
    count = len(files) if n is None else min(n, len(files))
    return torch.stack([ds[i][domain] for i in range(count)])


def features(s: Settings, images) -> "Any":
    from crdtool.metrics import fid as F

    return F.extract_features(inception(s), [F.to_uint8_images(images)], batch_size=25, device=eval_device())


def real_stats(s: Settings, dataset: str) -> dict[str, Path]:
    """Inception features of real testB (the target), testA (inputs) and trainB (floor), cached as .npz."""
    from crdtool.metrics import fid as F
    from crdtool.recipe import load_recipe

    root = data_root(s, dataset)
    size = load_recipe(base_recipe_path(s, dataset), _common(s, dataset)).data.crop_size
    wname = _inception_name(s)
    key = _digest({"root": str(root), "size": size, "inception": wname})
    out = {}
    for name, phase, dom in (("testB", "test", "B"), ("testA", "test", "A"), ("trainB", "train", "B")):
        path = s.runs_root / "cache" / f"real-{dataset}-{size}px-{name}-{key}.npz"
        if not path.is_file():
            n = None if name != "trainB" else _count(root / "testB")
            t = time.time()
            feats = features(s, load_split(root, phase, dom, size, n))
            path.parent.mkdir(parents=True, exist_ok=True)
            F.save_stats(path, F.stats_from_features(feats))
            log(f"{dataset}: real {name} features ({feats.shape[0]} images) in {time.time() - t:.0f} s")
        out[name] = path
    return out


def _count(folder: Path) -> int:
    from crdtool.data.images import list_images

    return len(list_images(folder))


def score(s: Settings, fake_feats, target) -> dict[str, float]:
    """FID (the library's sqrtm, pytorch-fid's protocol), the exact low-rank FID, and KID (mean, subset std)."""
    from crdtool.metrics import fid as F

    exact = F.frechet_distance_from_features(fake_feats, target.features)
    fid = F.fid_from_stats(F.stats_from_features(fake_feats), target) if s.fid_sqrtm else exact
    kid, kid_std = F.kernel_inception_distance(fake_feats, target.features, num_subsets=s.kid_subsets,
                                               subset_size=s.kid_subset_size)
    return {"fid": fid, "fid_exact": exact, "kid": kid, "kid_std": kid_std, "n": int(fake_feats.shape[0])}


def evaluate_generator(s: Settings, dataset: str, gen_path: Path, teacher_path: Path, stats: dict[str, Path],
                       out: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """FID/KID of the generator's translations of all of testA vs real testB; PSNR/SSIM vs the teacher."""
    done = _read_json(out)
    if done is not None:
        return done
    from crdtool.metrics import fid as F
    from crdtool.metrics.fidelity import fidelity
    from crdtool.models.checkpoints import load_generator
    from crdtool.recipe import load_recipe
    from crdtool.train.evaluate import translate

    t = time.time()
    size = load_recipe(base_recipe_path(s, dataset), _common(s, dataset)).data.crop_size
    inputs = load_split(data_root(s, dataset), "test", "A", size)
    dev = eval_device()
    gen = load_generator(gen_path).to(dev)
    fake = translate(gen, inputs)
    fid_t = None
    if Path(gen_path).resolve() != Path(teacher_path).resolve():
        fid_t = fidelity(fake, translate(load_generator(teacher_path).to(dev), inputs))
    row = {"format": RESULT_FORMAT, "version": RESULT_VERSION, **extra, "generator": _shown(gen_path),
           **score(s, features(s, fake), F.load_stats(stats["testB"])),
           "psnr_db": fid_t.psnr_db if fid_t else None, "ssim": fid_t.ssim if fid_t else None,
           "eval_seconds": time.time() - t}
    _write_json(out, row)
    return row


def _shown(path: str | Path) -> str:
    """A path as results files record it: relative to the working folder, never this machine's absolute path."""
    return os.path.relpath(path)


# ----------------------------------------------------------------------------- tasks (run in workers)


def _worker_init(threads: int) -> None:
    _set_threads(threads)


def task_teacher(s: Settings, dataset: str) -> dict[str, Any]:
    r = teacher_recipe(s, dataset)
    info = train_run(r, f"{dataset} teacher", log_every=s.log_every)
    run_dir = Path(r.run_dir)
    stats = real_stats(s, dataset)
    ev = evaluate_generator(s, dataset, run_dir / "teacher.safetensors", run_dir / "teacher.safetensors", stats,
                            run_dir / "eval.json", {"dataset": dataset, "arm": "teacher", "seed": 0, **info})
    log(f"{dataset} teacher: FID {ev['fid']:.2f}")
    return {"run_dir": _shown(run_dir), **ev}


def task_arm(s: Settings, dataset: str, arm: str, seed: int, teacher_dir: Path) -> dict[str, Any]:
    tag = f"{dataset} {arm} s{seed}"
    r = arm_recipe(s, dataset, arm, seed, teacher_dir)
    run_dir = Path(r.run_dir)
    ev_path = run_dir / "eval.json"
    if ev_path.is_file():
        return _read_json(ev_path)
    info = train_run(r, tag, log_every=s.log_every)
    gen = run_dir / ("teacher.safetensors" if arm == "no_kd" else "student.safetensors")
    ev = evaluate_generator(s, dataset, gen, teacher_dir / "teacher.safetensors", real_stats(s, dataset), ev_path,
                            {"dataset": dataset, "arm": arm, "seed": seed, "run_dir": _shown(run_dir), **info})
    log(f"{tag}: FID {ev['fid']:.2f}  KID {ev['kid'] * 1e3:.2f}  PSNR {ev['psnr_db']:.2f} dB")
    return ev


def _run_tasks(s: Settings, calls: list[tuple[Callable, tuple]]) -> list[Any]:
    if s.jobs <= 1 or len(calls) <= 1:
        return [fn(*args) for fn, args in calls]
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(s.jobs, len(calls)), mp_context=ctx, initializer=_worker_init,
                             initargs=(s.threads,)) as pool:
        futures = [pool.submit(fn, *args) for fn, args in calls]
        return [f.result() for f in futures]


# ----------------------------------------------------------------------------- statistics


def mean_std(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return m, sd


def summarize_arm(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": sorted(r["seed"] for r in rows), "n": len(rows)}
    for k in ("fid", "kid", "kid_std", "psnr_db", "ssim", "generator_steps", "images_seen", "train_seconds"):
        m, sd = mean_std([float(r[k]) for r in rows])
        out[k] = {"mean": m, "std": sd}
    return out


def judge(per_seed: dict[str, dict[int, float]], arms: dict[str, dict[str, Any]], metric: str = "fid") -> list[dict]:
    """Each paper claim FID(better) < FID(worse): margin in pooled seed-std units, per-seed wins, Welch p."""
    from scipy import stats as st

    out = []
    for better, worse, text in CLAIMS:
        if better not in arms or worse not in arms:
            continue
        a, b = arms[better][metric], arms[worse][metric]
        diff = b["mean"] - a["mean"]  # > 0: the claim held
        pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)  # nan with one seed
        ratio = diff / pooled if pooled > 0 else (math.copysign(math.inf, diff) if pooled == 0 else math.nan)
        seeds = sorted(set(per_seed[better]) & set(per_seed[worse]))
        wins = sum(per_seed[better][k] < per_seed[worse][k] for k in seeds)
        xa, xb = [per_seed[better][k] for k in per_seed[better]], [per_seed[worse][k] for k in per_seed[worse]]
        p = float(st.ttest_ind(xa, xb, equal_var=False).pvalue) if min(len(xa), len(xb)) > 1 else float("nan")
        held = diff > 0
        clear = ratio == ratio and abs(ratio) >= CLEAR
        noise = " (within seed noise)" if ratio == ratio else " (one seed: no spread to compare with)"
        verdict = ("held" if held else "reversed") + (" clearly" if clear else noise)
        out.append({"better": better, "worse": worse, "claim": text, "metric": metric,
                    "mean_better": a["mean"], "mean_worse": b["mean"], "difference": diff, "pooled_std": pooled,
                    "difference_in_std": ratio, "seed_wins": wins, "seeds_compared": len(seeds),
                    "welch_p": p, "held": held, "clear": clear, "verdict": verdict})
    return out


def headline(claims: list[dict]) -> dict[str, Any]:
    by = {(c["better"], c["worse"]): c for c in claims}

    def chain(pairs):
        got = [by[p] for p in pairs if p in by]
        if len(got) < len(pairs):
            return None
        return {"held": all(c["held"] for c in got), "clear": all(c["held"] and c["clear"] for c in got)}

    return {"kd_order": chain([("crd", "instance_rkd"), ("instance_rkd", "no_kd")]),
            "discriminator_order": chain([("crd", "crd_d_updated"), ("crd", "crd_no_d")])}


# ----------------------------------------------------------------------------- reports


def _fmt(m: float, sd: float, d: int = 2) -> str:
    return f"{m:.{d}f} ± {sd:.{d}f}" if sd == sd else f"{m:.{d}f}"


def _ordering_sentence(h: dict | None, what: str) -> str:
    if h is None:
        return f"{what}: not all arms were run."
    if h["clear"]:
        return f"{what}: **held**, every step by at least {CLEAR:g} seed standard deviations."
    if h["held"]:
        return f"{what}: **held in the means**, but not every step by {CLEAR:g} seed standard deviations."
    return f"{what}: **did not hold**."


def claim_line(c: dict) -> str:
    r = c["difference_in_std"]
    rs = f"{r:+.1f}" if r == r else "n/a"
    return (f"{c['claim']}: {c['verdict']} — FID {c['mean_better']:.2f} vs {c['mean_worse']:.2f}, "
            f"difference {c['difference']:+.2f} = {rs} × pooled seed std ({c['pooled_std']:.2f}); "
            f"{c['seed_wins']}/{c['seeds_compared']} seeds; Welch p = {c['welch_p']:.3g}")


def arms_table(res: dict[str, Any]) -> list[str]:
    lines = ["| arm | FID ↓ | KID ×10³ ↓ (subset std) | PSNR vs teacher (dB) | SSIM vs teacher | generator steps "
             "| images seen | train min/run | paper h2z FID |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in [n for n in ARMS if n in res["arms"]]:  # JSON files hold them sorted by name
        a = res["arms"][name]
        kid = f"{_fmt(a['kid']['mean'] * 1e3, a['kid']['std'] * 1e3)} ({a['kid_std']['mean'] * 1e3:.2f})"
        lines.append(f"| {ARMS[name][0]} | {_fmt(a['fid']['mean'], a['fid']['std'])} | {kid} | "
                     f"{_fmt(a['psnr_db']['mean'], a['psnr_db']['std'])} | {_fmt(a['ssim']['mean'], a['ssim']['std'], 3)} | "
                     f"{a['generator_steps']['mean']:.0f} | {a['images_seen']['mean']:.0f} | "
                     f"{a['train_seconds']['mean'] / 60:.1f} | {PAPER_H2Z_FID[name]:.2f} |")
    ref = res["references"]
    lines.append(f"| *teacher ({res['setup']['teacher']})* | {ref['teacher']['fid']:.2f} | "
                 f"{ref['teacher']['kid'] * 1e3:.2f} ({ref['teacher']['kid_std'] * 1e3:.2f}) | | | "
                 f"{ref['teacher']['generator_steps']} | {ref['teacher']['images_seen']} | "
                 f"{ref['teacher']['train_seconds'] / 60:.1f} | |")
    for key, text in (("inputs", "untranslated inputs (testA)"), ("real_floor", "real floor (trainB)")):
        lines.append(f"| *{text}* | {ref[key]['fid']:.2f} | {ref[key]['kid'] * 1e3:.2f} "
                     f"({ref[key]['kid_std'] * 1e3:.2f}) | | | | | | |")
    return lines


def write_markdown(res: dict[str, Any], path: Path) -> None:
    su = res["setup"]
    lines = [f"# Quality ablation: {res['dataset']}, {res['scale']} scale", "",
             f"{su['description']}", "",
             f"Seeds {su['seeds']}; mean ± sample std over seeds. FID/KID: {su['fid_protocol']}", ""]
    lines += arms_table(res)
    lines += ["", "## Does the paper's ordering hold here?", "",
              "- " + _ordering_sentence(res["headline"]["kd_order"], "CRD < instance RKD < no distillation"),
              "- " + _ordering_sentence(res["headline"]["discriminator_order"], "frozen D < updated D and frozen D < no D"),
              ""]
    lines += [f"- {claim_line(c)}" for c in res["claims"]]
    lines += ["", f"Verdicts use FID; a difference of at least {CLEAR:g}× the pooled seed std counts as clear. "
              "The same claims judged with KID: " + "; ".join(f"{c['claim']} {c['verdict']}" for c in res["claims_kid"]),
              "", "## Deviations from the paper", ""] + [f"- {d}" for d in su["deviations"]]
    lines += ["", f"Grid: `{Path(res['grid']).name}` (rows: the first test images; columns: input, teacher, "
              "then each arm's seed-" + str(min(su['seeds'])) + " student).", ""]
    from crdtool.fileio import write_bytes_atomic

    write_bytes_atomic(path, "\n".join(lines).encode())


def write_grid(s: Settings, dataset: str, teacher_dir: Path, runs: dict[str, Path], path: Path) -> None:
    """Rows: first test inputs; columns: input | teacher | each arm's student (same inputs), labelled."""
    import numpy as np
    from PIL import Image, ImageDraw

    from crdtool.data.images import to_uint8
    from crdtool.models.checkpoints import load_generator
    from crdtool.recipe import load_recipe
    from crdtool.train.evaluate import translate
    from crdtool.fileio import atomic_path

    size = load_recipe(base_recipe_path(s, dataset), _common(s, dataset)).data.crop_size
    inputs = load_split(data_root(s, dataset), "test", "A", size, s.grid_rows)
    cols = [("input", inputs), ("teacher", translate(load_generator(teacher_dir / "teacher.safetensors"), inputs))]
    for arm, gen in runs.items():
        cols.append((arm, translate(load_generator(gen), inputs)))
    up = max(1, 128 // size)
    cell = size * up
    head = 14
    grid = Image.new("RGB", (cell * len(cols), head + cell * inputs.shape[0]), "white")
    draw = ImageDraw.Draw(grid)
    for j, (name, imgs) in enumerate(cols):
        draw.text((j * cell + 2, 1), name[: max(4, cell // 6)], fill="black")
        for i in range(imgs.shape[0]):
            tile = Image.fromarray(np.ascontiguousarray(to_uint8(imgs[i])))
            if up > 1:
                tile = tile.resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (j * cell, head + i * cell))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")


def aggregate(s: Settings, dataset: str, teacher: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    from crdtool.metrics import fid as F
    from crdtool.recipe import load_recipe

    base = load_recipe(base_recipe_path(s, dataset), _common(s, dataset))
    stats = real_stats(s, dataset)
    target = F.load_stats(stats["testB"])
    refs = {"teacher": {k: teacher[k] for k in ("fid", "kid", "kid_std", "n", "generator_steps", "images_seen",
                                                 "train_seconds")}}
    for key, name in (("inputs", "testA"), ("real_floor", "trainB")):
        refs[key] = score(s, F.load_stats(stats[name]).features.astype("float64"), target)
    arms = {a: summarize_arm([r for r in rows if r["arm"] == a]) for a in s.arms if any(r["arm"] == a for r in rows)}
    per_seed = {a: {r["seed"]: r["fid"] for r in rows if r["arm"] == a} for a in arms}
    per_seed_kid = {a: {r["seed"]: r["kid"] for r in rows if r["arm"] == a} for a in arms}
    claims = judge(per_seed, arms, "fid")
    t = base.teacher
    st = base.student
    d_text = "from the teacher run's trained D_A" if s.d_init == "teacher" else "from scratch"
    setup = {
        "description": (f"{dataset}: {base.data.crop_size} px crops from {base.data.load_size} px loads; teacher "
                        f"{t.arch} ngf {t.ngf} ({t.n_blocks} blocks), trained once as an online CycleGAN for "
                        f"{base.train.teacher_epochs + base.train.teacher_epochs_decay} epochs and cached; students "
                        f"{st.arch} ngf {st.ngf} ({st.n_blocks} blocks), {base.train.student_epochs} epochs each "
                        f"(same images seen for every arm; instance RKD takes them 4 per step). The student arms' "
                        f"discriminator starts {d_text}."),
        "teacher": f"{t.arch} ngf {t.ngf}", "student": f"{st.arch} ngf {st.ngf}", "seeds": s.seeds,
        "crop_size": base.data.crop_size, "student_epochs": base.train.student_epochs,
        "teacher_epochs": base.train.teacher_epochs + base.train.teacher_epochs_decay, "d_init": s.d_init,
        "fid_protocol": (f"all {teacher['n']} testA images translated at {base.data.crop_size} px vs real testB "
                         f"resized to {base.data.crop_size} px (bicubic) then 299 px (bilinear), TF-Inception pool3; "
                         f"KID over {s.kid_subsets} subsets of {min(s.kid_subset_size, teacher['n'])}."),
        "inception": _inception_name(s),
        "recipe": str(base_recipe_path(s, dataset).relative_to(ROOT) if base_recipe_path(s, dataset).is_relative_to(ROOT)
                      else base_recipe_path(s, dataset)),
        "overrides": s.overrides, "subset": s.subset,
        "deviations": [
            "no perceptual (VGG-16 style/feature) loss in any arm: ImageNet VGG weights are not available offline"
            if base.loss.vgg_weights is None else "perceptual loss on",
            f"{base.data.crop_size} px instead of 256 px, small generators, {base.train.student_epochs} student epochs "
            "instead of ~200" if base.data.crop_size < 256 else f"{base.train.student_epochs} student epochs",
            "pretrained-teacher mode: the teacher is trained first and frozen; its discriminator keeps learning "
            "real vs teacher output during the student's steps (the paper trains them together online)",
            "datasets photo2anime / cat2dog with 100 test images, not horse2zebra (FID is biased upwards at n=100; "
            "compare arms with each other and with the references, not with the paper's numbers)",
        ],
    }
    out = {"format": RESULT_FORMAT, "version": RESULT_VERSION, "dataset": dataset, "scale": s.scale, "setup": setup,
           "arms": arms, "references": refs, "claims": claims, "claims_kid": judge(per_seed_kid, arms, "kid"),
           "headline": headline(claims), "paper_h2z_fid": PAPER_H2Z_FID, "runs": rows,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    stem = s.results_dir / f"quality_ablation-{dataset}-{s.scale}"
    out["grid"] = str(stem.with_suffix(".png").name)
    seed0 = min(s.seeds)
    gens = {r["arm"]: Path(r["generator"]) for r in sorted(rows, key=lambda r: s.arms.index(r["arm"]))
            if r["seed"] == seed0}
    s.results_dir.mkdir(parents=True, exist_ok=True)
    write_grid(s, dataset, Path(teacher["run_dir"]), gens, stem.with_suffix(".png"))
    _write_json(stem.with_suffix(".json"), out)
    write_markdown(out, stem.with_suffix(".md"))
    return out


def write_snippet(results_dir: Path) -> Path | None:
    """The README's "Does it work?" section, from every quality_ablation-*.json in ``results_dir``."""
    from crdtool.fileio import write_bytes_atomic

    found = []
    for p in sorted(results_dir.glob("quality_ablation-*-*.json")):
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if d.get("format") == RESULT_FORMAT:
            for key in ("arms", "references", "claims", "claims_kid"):
                d[key] = _unclean(d[key])
            found.append(d)
    if not found:
        return None
    found.sort(key=lambda d: (SCALES.index(d["scale"]) if d["scale"] in SCALES else 9, d["dataset"]))
    lines = ["## Does it work?", "",
             "The paper's claim is an ordering (horse2zebra FID): CRD 46.61 < instance-level RKD 63.93 < no "
             "distillation 96.72, and its frozen online discriminator (46.61) beats an always-updated one (58.02) "
             "and none (62.75). `benchmarks/quality_ablation.py` retests it on real images crdtool did not generate, "
             "at a reduced budget that is equal for every arm (same student, same images seen, same seeds), with "
             "FID/KID (TF-Inception) against the real target-domain test images.", ""]
    for d in found:
        su = d["setup"]
        lines += [f"### {d['dataset']}, {d['scale']} scale ({len(su['seeds'])} seeds)", "", su["description"], ""]
        lines += arms_table(d)
        lines += ["", "- " + _ordering_sentence(d["headline"]["kd_order"], "CRD < instance RKD < no distillation"),
                  "- " + _ordering_sentence(d["headline"]["discriminator_order"],
                                            "frozen D < updated D and frozen D < no D")]
        lines += [f"  - {claim_line(c)}" for c in d["claims"]]
        lines += ["", f"![{d['dataset']} {d['scale']}: input, teacher, each arm's student]"
                      f"(benchmarks/results/{d['grid']})", ""]
    lines += ["Caveats (same for every arm): " + "; ".join(found[0]["setup"]["deviations"]) + ".", ""]
    if not any(d["scale"] == "gpu" for d in found):
        lines += ["The 256x256 GPU-scale run (`--scale gpu`) has not been run: no GPU was available.", ""]
    path = results_dir / "quality_ablation-README-snippet.md"
    write_bytes_atomic(path, "\n".join(lines).encode())
    return path


# ----------------------------------------------------------------------------- driver


def run(s: Settings) -> dict[str, dict[str, Any]]:
    """Teachers (cached), real statistics, every arm x seed, then the per-dataset reports."""
    for a in s.arms:
        if a not in ARMS:
            raise SystemExit(f"unknown arm {a!r}; known: {', '.join(ARMS)}")
    _worker_init(s.threads)
    t0 = time.time()
    log(f"quality ablation, scale {s.scale}: datasets {s.datasets}, arms {s.arms}, seeds {s.seeds}, "
        f"jobs {s.jobs} x {s.threads} thread(s)")
    teachers = dict(zip(s.datasets, _run_tasks(s, [(task_teacher, (s, d)) for d in s.datasets])))
    calls = [(task_arm, (s, d, a, seed, Path(teachers[d]["run_dir"])))
             for seed in s.seeds for d in s.datasets for a in s.arms]
    rows = _run_tasks(s, calls)
    results = {}
    for d in s.datasets:
        res = aggregate(s, d, teachers[d], [r for r in rows if r["dataset"] == d])
        results[d] = res
        h = res["headline"]
        log(f"{d}: " + _ordering_sentence(h["kd_order"], "CRD < instance RKD < no KD") + " "
            + _ordering_sentence(h["discriminator_order"], "frozen < updated, none"))
    if s.write_snippet:
        p = write_snippet(s.results_dir)
        log(f"README snippet: {p}")
    log(f"all done in {(time.time() - t0) / 60:.1f} min")
    return results


def _parse_set(items: list[str]) -> dict[str, Any]:
    import tomllib

    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=SCALES, default="cpu")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--data-root", type=Path, default=None, help="folder holding <dataset>/ (default: the recipes')")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "quality_ablation", help="run and cache folder")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override for every run")
    p.add_argument("--subset", type=int, default=None, help="smoke runs: first N images per folder")
    p.add_argument("--jobs", type=int, default=None, help="parallel runs (default: 2 on cpu, 1 on gpu)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--inception-weights", type=Path, default=None)
    p.add_argument("--d-init", choices=("teacher", "scratch"), default="teacher")
    a = p.parse_args(argv)
    s = Settings(scale=a.scale, datasets=a.datasets, seeds=a.seeds, arms=a.arms, data_root=a.data_root,
                 runs_root=a.runs.resolve(), results_dir=a.results.resolve(), overrides=_parse_set(a.set),
                 subset=a.subset, jobs=a.jobs if a.jobs is not None else (2 if a.scale == "cpu" else 1),
                 threads=a.threads, inception=a.inception_weights, d_init=a.d_init)
    run(s)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # numpy/scipy BLAS too
        os.environ.setdefault(_var, _threads)
    sys.exit(main())

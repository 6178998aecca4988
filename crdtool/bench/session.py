"""One ``crdtool bench`` run as a library call: which artifacts, on which backends, at which size; then the
latency measurements, the teacher/student speed-ups and, optionally, FID/KID. The CLI only renders it."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from crdtool.bench.artifacts import check_size, export_temp_onnx, native_size, resolve_pair
from crdtool.bench.env import current_command, load_avg
from crdtool.bench.inputs import find_image_folder, recipe_test_folder, run_folder_of
from crdtool.bench.latency import BenchSpec, LatencyResult, bench_artifacts
from crdtool.bench.quality import QualityResult
from crdtool.bench.report import Speedup, bench_document, speedups
from crdtool.bench.runners import artifact_kind, default_backend, parse_backend
from crdtool.errors import CrdError


@dataclass
class BenchRun:
    results: list[LatencyResult]
    comparisons: list[Speedup] = field(default_factory=list)
    quality: list[QualityResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)


def plan_specs(artifacts: Sequence[str], backends: Sequence[str], *, size: int | None = None, batch: int = 1,
               warmup: str = "auto", runs: int = 200, max_seconds: float | None = None, threads: int | None = None,
               images: str | Path | None = None, host_io: bool = False, reference: str | Path | None = None,
               names: dict[str, str] | None = None) -> list[BenchSpec]:
    """artifacts x backends. Each artifact runs at ``size`` if given (checked against what it accepts), else
    at its own size: a static ONNX/engine's input, a run's training crop, else 256."""
    for b in backends:
        if b != "auto":
            parse_backend(b)
    specs = []
    for a in artifacts:
        if not Path(a).exists():
            raise CrdError(f"not found: {a}")
        if str(a).endswith(".toml"):
            raise CrdError(f"{a} is a recipe: benchmark its teacher and student with --compare")
        artifact_kind(a)  # fail early, in one line, on a path we cannot handle
        s = size if size is not None else native_size(a)
        check_size(a, s)
        specs += [BenchSpec(a, b, batch, s, warmup, runs, max_seconds, threads, str(images) if images else None,
                            host_io, str(reference) if reference else None, name=(names or {}).get(a))
                  for b in backends]
    return specs


def run_bench(artifacts: Sequence[str], backends: Sequence[str] = ("auto",), *, compare: bool = False,
              fid: bool = False, data: str | Path | None = None, direction: str = "AtoB",
              images: str | Path | None = None, real_stats: str | Path | None = None, fid_images: int | None = None,
              inception_weights: str | Path | None = None, isolate: bool = True,
              on_start: Callable[[BenchSpec, int, int], None] | None = None,
              on_fid: Callable[[str, str], None] | None = None, **spec_fields: Any) -> BenchRun:
    """Measure ``artifacts`` (with ``compare``: a recipe, a run folder, or teacher then student) on ``backends``;
    ``on_start(spec, i, n)`` announces each measurement. ``spec_fields`` are ``plan_specs`` options."""
    load_start = load_avg()
    if direction not in ("AtoB", "BtoA"):
        raise CrdError(f"--direction must be AtoB or BtoA, got {direction!r}")
    if fid:  # fail before minutes of latency measurements, not after them
        from crdtool.metrics.fid import resolve_inception_path

        resolve_inception_path(inception_weights)
    notes: list[str] = []
    names: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="crdtool-bench-") as tmp:
        artifacts = [str(a) for a in artifacts]
        if compare and spec_fields.get("size") is None and len(artifacts) == 1:
            spec_fields["size"] = native_size(artifacts[0])  # a recipe's or run's size, for teacher and student
        if compare:
            pair = resolve_pair(artifacts, tmp)
            artifacts = [pair.teacher, pair.student]
            names = {pair.teacher: pair.teacher_name, pair.student: pair.student_name}
            notes += pair.notes
            if data is None and not images:
                images = pair.images
        if images is None and data is not None:
            images = find_image_folder(data, direction)
        specs = plan_specs(artifacts, backends, images=images, names=names, **spec_fields)
        counter = iter(range(1, len(specs) + 1))

        def started(spec: BenchSpec) -> None:
            if on_start:
                on_start(spec, next(counter), len(specs))

        results = bench_artifacts(specs, isolate=isolate, on_start=started, command=current_command())
        comparisons = speedups([r for r in results if r.artifact == artifacts[0]],
                               [r for r in results if r.artifact == artifacts[1]]) if compare else []
        quality = fid_quality(specs, data, direction, real_stats, fid_images, inception_weights,
                              spec_fields.get("threads"), tmp, on_fid) if fid else []
    doc = bench_document(results, comparisons, quality, command=current_command(), notes=notes,
                         load_avg_start=load_start)
    return BenchRun(results, comparisons, quality, notes, doc)


def fid_quality(specs: list[BenchSpec], data, direction: str, real_stats, n: int | None, inception_weights,
                threads: int | None, tmp: str | Path, on_fid: Callable[[str, str], None] | None = None
                ) -> list[QualityResult]:
    """FID/KID of each spec's artifact on the test split (a checkpoint on an onnxruntime backend goes through
    a temporary ONNX export); one failing artifact gets an error row, the others still run."""
    from crdtool.bench.quality import eval_split, evaluate_fid, load_real, teacher_split
    from crdtool.metrics.fid import load_inception
    from crdtool.recipe import load_recipe

    say = on_fid or (lambda stage, name: None)
    split = None
    if data is None:
        run = run_folder_of(specs[0].artifact)
        recipe = load_recipe(run / "recipe.toml") if run is not None else None  # read once, used twice
        split = teacher_split(run, recipe) if recipe is not None else None
        guess = recipe_test_folder(specs[0].artifact, recipe) if split is None else None
        data = guess.parent if guess is not None else None
    if data is None and split is None:
        raise CrdError("--fid needs --data ROOT (the dataset with the test split)")
    split = split or eval_split(data, direction)
    model = load_inception(inception_weights)
    say("real statistics", "")
    real, real_desc = load_real(split, model, real_stats, n, specs[0].size)
    out = []
    for spec in specs:
        name = spec.name or Path(spec.artifact).name
        say(f"translating the test split on {spec.backend}", name)
        try:
            kind = artifact_kind(spec.artifact)
            be = default_backend(kind) if spec.backend == "auto" else parse_backend(spec.backend)
            onnx = None
            if kind == "torch" and be.framework == "onnx":
                onnx = export_temp_onnx(spec.artifact, Path(tmp) / f"fid-{len(out)}.onnx", spec.batch, spec.size)
            q = evaluate_fid(spec.artifact, be.label, data, direction, model, real, n, spec.size, spec.batch,
                             threads, onnx, name, split)
            q.real = real_desc
        except CrdError as e:
            q = QualityResult(spec.artifact, name, spec.backend, "?", error=str(e))
        out.append(q)
    return out

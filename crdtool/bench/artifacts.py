"""What bench needs to know about an artifact besides running it: MACs, its PyTorch source, teacher/student pairs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from crdtool.bench.inputs import find_image_folder, recipe_test_folder, run_folder_of
from crdtool.bench.runners import artifact_kind
from crdtool.errors import CrdError

if TYPE_CHECKING:
    from crdtool.profile import ModelProfile


def profile_artifact(artifact: str | Path, size: int, reference: str | Path | None = None) -> ModelProfile | None:
    """The ``crdtool.profile`` ModelProfile of an artifact at ``size``, or None if its network is unknown.

    Torch artifacts are profiled; an ONNX/engine file uses ``reference``, else the generator spec or the
    source checkpoint recorded in the export's manifest.json beside it.
    """
    from crdtool.profile import profile_checkpoint, profile_spec

    try:
        if artifact_kind(artifact) == "torch" or reference:
            return profile_checkpoint(artifact if artifact_kind(artifact) == "torch" else reference, size)
        info = manifest_entry(artifact)
        if info.get("spec") is not None:
            return profile_spec(info["spec"], size)
        if info.get("source"):
            return profile_checkpoint(info["source"], size)
    except CrdError:
        pass
    return None


def native_size(artifact: str | Path) -> int:
    """The input side an artifact (or recipe) is meant for: a fixed-shape ONNX graph's own input, an engine's
    export manifest, the training crop of a recipe or of the run folder a checkpoint is in, else 256."""
    from crdtool.deploy.export import DEFAULT_SIZE

    p = Path(artifact)
    fixed = None if p.suffix == ".toml" else _fixed_size(p)
    if fixed is not None:
        return fixed
    run = run_folder_of(p) if p.suffix != ".toml" and artifact_kind(p) == "torch" else None
    if p.suffix == ".toml" or run is not None:
        try:
            from crdtool.recipe import load_recipe

            return load_recipe(p if p.suffix == ".toml" else run / "recipe.toml").data.crop_size
        except CrdError:
            pass
    return DEFAULT_SIZE


def _fixed_size(artifact: str | Path) -> int | None:
    """H (= W) of a fixed-shape ONNX graph or engine; None for checkpoints and dynamic graphs."""
    p = Path(artifact)
    kind = artifact_kind(p)
    if kind == "onnx":
        import onnx

        try:
            graph = onnx.load(str(p), load_external_data=False).graph
        except Exception:  # unreadable graphs fail later, in one line, where they are run
            return None
        dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
        values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        return values[2] if len(values) == 4 and values[2] and values[2] == values[3] else None
    if kind != "torch":
        shape = manifest_entry(p).get("input_shape")
        if isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) for v in shape[2:]):
            return shape[2]
    return None


def check_size(artifact: str | Path, size: int) -> None:
    """A one-line error for a size the artifact cannot run at (another fixed shape, or not a stride multiple)."""
    fixed = _fixed_size(artifact)
    if fixed is not None and fixed != size:
        raise CrdError(f"--size {size} does not fit {Path(artifact).name}: its input is fixed at {fixed}x{fixed} "
                       f"(omit --size, or export with --dynamic)")
    stride = manifest_entry(artifact).get("stride")
    if artifact_kind(artifact) == "torch":
        from crdtool.models.checkpoints import load_generator
        from crdtool.models.registry import generator_stride

        try:
            stride = generator_stride(load_generator(artifact))
        except (CrdError, AttributeError, ValueError):
            stride = None
    stride = stride or 4  # every generator family downsamples at least twice
    if size < stride or size % stride:
        raise CrdError(f"--size {size} must be a positive multiple of {stride} for {Path(artifact).name}")


def manifest_entry(artifact: str | Path) -> dict[str, Any]:
    """What the export's ``manifest.json`` beside ``artifact`` says: ``source`` (an existing checkpoint or
    None), ``spec`` (GeneratorSpec or None) and ``kind`` (e.g. onnx-int8-qdq). Empty when there is none."""
    p = Path(artifact)
    mf = p.parent / "manifest.json"
    if not mf.is_file():
        return {}
    try:
        doc = json.loads(mf.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[str, Any] = {"source": None, "spec": None, "kind": None, "input_shape": None, "stride": None}
    inp = doc.get("input") if isinstance(doc.get("input"), dict) else {}
    if not inp.get("dynamic"):
        out["input_shape"] = inp.get("shape")
    if isinstance(inp.get("stride"), int):
        out["stride"] = inp["stride"]
    src = doc.get("source") if isinstance(doc.get("source"), dict) else {}
    if isinstance(src.get("path"), str):
        for cand in (Path(src["path"]), mf.parent / src["path"]):
            if cand.exists():
                out["source"] = str(cand)
                break
    if isinstance(src.get("generator"), dict):
        try:
            from crdtool.models.registry import GeneratorSpec

            out["spec"] = GeneratorSpec.from_dict(src["generator"])
        except (CrdError, TypeError):
            pass
    for entry in doc.get("artifacts") or []:
        if isinstance(entry, dict) and Path(str(entry.get("file", ""))).name == p.name:
            out["kind"] = entry.get("kind")
            if entry.get("input_shape"):  # a file kept from an earlier export at another size
                out["input_shape"] = entry["input_shape"]
    return out


def resolve_reference(artifact: str | Path, reference: str | Path | None = None) -> str | None:
    """The PyTorch checkpoint fidelity is measured against: given, else the manifest's source, else None."""
    if reference:
        return str(reference)
    if artifact_kind(artifact) == "torch":
        return None
    return manifest_entry(artifact).get("source")


def export_temp_onnx(artifact: str, path: Path, batch: int, size: int) -> Path:
    """A static-shape ONNX of a checkpoint, so it can run on the onnxruntime backends."""
    from crdtool.deploy.onnx import export_onnx
    from crdtool.models.checkpoints import load_generator

    model = load_generator(artifact)
    from crdtool.deploy.optimize import optimize_for_cpu

    onnx_path = export_onnx(model, path, input_shape=(batch, model.spec.input_nc, size, size), dynamic=False)
    return optimize_for_cpu(onnx_path, onnx_path)  # the same exact CPU rewrites `crdtool export` applies


@dataclass
class Pair:
    teacher: str
    student: str
    teacher_name: str
    student_name: str
    notes: list[str] = field(default_factory=list)
    images: str | None = None  # the recipe's test split, used as benchmark inputs


def resolve_pair(targets: Sequence[str | Path], workdir: str | Path) -> Pair:
    """Teacher and student for ``--compare``: two checkpoints, a run folder, or a recipe.

    A recipe uses its run folder's trained weights when they exist, then the teacher checkpoint it
    names; a network with no weights anywhere is built with random weights into ``workdir`` (latency
    does not depend on weight values), and a note says so.
    """
    from crdtool.models.checkpoints import load_generator, save_generator
    from crdtool.models.registry import build_generator

    def label(role: str, path: str) -> str:
        try:
            return f"{role} {load_generator(path).spec.describe()}"
        except (CrdError, AttributeError):
            return role

    targets = [str(t) for t in targets]
    notes: list[str] = []
    images = None
    if len(targets) == 2:
        teacher, student = targets
    elif len(targets) == 1 and Path(targets[0]).is_dir():
        run = Path(targets[0])
        teacher, student = str(run / "teacher.safetensors"), str(run / "student.safetensors")
        for p in (teacher, student):
            if not Path(p).is_file():
                raise CrdError(f"{run} has no {Path(p).name}: --compare needs a finished run folder")
    elif len(targets) == 1 and targets[0].endswith(".toml"):
        from crdtool.recipe import load_recipe

        recipe = load_recipe(targets[0])
        run = recipe.run_dir
        found = {}
        for role, cfg in (("teacher", recipe.teacher), ("student", recipe.student)):
            candidates = [run / f"{role}.safetensors"] + ([cfg.checkpoint] if cfg.checkpoint else [])
            path = next((p for p in candidates if p and Path(p).is_file()), None)
            if path is None:
                path = Path(workdir) / f"{role}.safetensors"
                save_generator(build_generator(cfg.spec()), path)
                notes.append(f"{role}: no trained weights in {run} (random weights: latency does not depend on them)")
            found[role] = str(path)
        teacher, student = found["teacher"], found["student"]
        try:
            images = str(find_image_folder(recipe.data.root, recipe.data.direction))
        except CrdError:
            images = None
    else:
        raise CrdError("--compare takes a recipe (.toml), a run folder, or two checkpoints (teacher then student)")
    if images is None:
        found_images = recipe_test_folder(student)
        images = str(found_images) if found_images else None
    return Pair(teacher, student, label("teacher", teacher), label("student", student), notes, images)

"""Outputs of a frozen teacher, computed once per image and reused for every later epoch and run.

A pretrained CycleGAN teacher costs ~57 GMACs per 256 px image, about 40x the student, so on a CPU
recomputing it every step dominates a distillation. Its output for an image never changes while its
weights do not, so it is translated once, on the whole resized image, and the training step takes
the same random crop of the (input, teacher output) pair (``crop_pair``). A mirrored crop comes from the
teacher's output for the mirrored image, as the uncached path computes it: mirroring the output instead
would shift whatever texture the teacher ties to its own pixel grid (a stride-2 upsampler leaves one) by
a pixel against the student's.

Entries are keyed by (teacher weights digest, image file content digest, view): other weights, an
edited image or another resize are other entries, never stale hits. They live in memory and,
with ``folder``, on disk as one float16 ``.npy`` per image under ``folder/<weights digest>/``, so
separate runs with the same teacher share them.

With ``taps`` (loss.lambda_distill), the same forward also keeps the teacher's inner features at those
modules, as another entry per image. They are large (the vintagify teacher at 256 px: 8 MB per image for
four taps, twenty times its output), so with a ``folder`` they are kept on disk only, not in memory.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from crdtool.fileio import write_bytes_atomic
from crdtool.losses import FeatureCapture

FEATURES = "#features"  # the suffix of a features entry's view
STORAGE_DTYPE = np.float16  # ~1e-3 relative error: far below the 1/127.5 step of the saved 8-bit images


def weights_digest(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``model``'s state dict."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (cheap for images, and stable across copies and renames)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TeacherCache:
    """``cache.outputs(paths, inputs, view)``: the teacher's outputs for ``inputs`` (N, 3, H, W), the
    images of ``paths`` as prepared by ``view`` (e.g. "resize256"); only misses run the teacher.

    Counters: ``hits``, ``misses`` (images translated) and ``teacher_calls`` (batches that needed the teacher).
    ``taps`` / ``taps_id``: modules of ``teacher`` whose outputs are kept too, and a name for that choice.
    """

    def __init__(self, teacher: nn.Module, folder: str | Path | None = None, memory: bool = True,
                 taps: Sequence[nn.Module] = (), taps_id: str = ""):
        self.teacher = teacher
        self.taps, self.taps_id = list(taps), taps_id
        self.digest = weights_digest(teacher)
        self._root = Path(folder) if folder is not None else None
        self.memory: dict[str, torch.Tensor] | None = {} if memory else None
        self._file_digests: dict[tuple[str, int, int], str] = {}
        self.hits = self.misses = self.teacher_calls = 0

    @property
    def folder(self) -> Path | None:
        """Where this teacher's entries live on disk: one subfolder per weights digest."""
        return self._root / self.digest[:16] if self._root is not None else None

    def use(self, teacher: nn.Module) -> bool:
        """Serve ``teacher`` from now on (an online teacher after a round, or a newly chosen best one); True
        if its weights differ from the last ones, whose in-memory entries are then dropped (never reused)."""
        self.teacher = teacher
        digest = weights_digest(teacher)
        if digest == self.digest:
            return False
        self.digest = digest
        if self.memory is not None:
            self.memory.clear()
        return True

    def key(self, path: str | Path, view: str) -> str:
        path = Path(path)
        st = path.stat()
        ident = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if ident not in self._file_digests:
            self._file_digests[ident] = file_digest(path)
        return hashlib.sha256(f"{self.digest}:{self._file_digests[ident]}:{view}".encode()).hexdigest()[:32]

    def _file(self, key: str) -> Path | None:
        return self.folder / f"{key}.npy" if self.folder is not None else None

    def _in_memory(self, view: str) -> bool:
        return self.memory is not None and (self.folder is None or not view.endswith(FEATURES))

    def features_view(self, view: str) -> str:
        """The entry that holds the teacher's features at its taps for images prepared by ``view``."""
        return f"{view}:{self.taps_id}{FEATURES}"

    def lookup(self, path: str | Path, view: str) -> torch.Tensor | None:
        """The cached (3, H, W) float32 output, or None."""
        key = self.key(path, view)
        if self._in_memory(view) and key in self.memory:
            return self.memory[key].float()
        file = self._file(key)
        if file is not None and file.is_file():
            try:
                out = torch.from_numpy(np.load(file, allow_pickle=False))
            except (OSError, ValueError, EOFError):  # a damaged entry is recomputed, not fatal
                return None
            if self._in_memory(view):
                self.memory[key] = out
            return out.float()
        return None

    def store(self, path: str | Path, view: str, output: torch.Tensor) -> torch.Tensor:
        """Keep ``output`` (3, H, W); returns it as stored (float16-rounded, as float32), so a miss
        and a later hit hand the student exactly the same target."""
        key = self.key(path, view)
        half = output.detach().to("cpu", torch.float32).numpy().astype(STORAGE_DTYPE)
        if self._in_memory(view):
            self.memory[key] = torch.from_numpy(half)
        file = self._file(key)
        if file is not None:
            buf = io.BytesIO()
            np.save(buf, half, allow_pickle=False)
            write_bytes_atomic(file, buf.getvalue())
        return torch.from_numpy(half).float()

    def outputs(self, paths: Sequence[str | Path], inputs: torch.Tensor, view: str) -> torch.Tensor:
        """Teacher outputs for a batch, in ``inputs``' dtype and device; misses in one forward call."""
        if len(paths) != len(inputs):
            raise ValueError(f"{len(paths)} paths for {len(inputs)} inputs")
        out = self.outputs_for(paths, view, lambda i: inputs[i])
        return out.to(inputs.device, inputs.dtype)

    @torch.no_grad()
    def outputs_for(self, paths: Sequence[str | Path], view: str,
                    load_input: Callable[[int], torch.Tensor], features: bool = False) -> torch.Tensor:
        """(N, 3, H, W) float32 CPU outputs; ``load_input(i)`` gives image i's (3, H, W) input and is
        called only for misses (a training step with every image cached decodes nothing). ``features``:
        the features at the taps instead, concatenated over channels in the taps' order."""
        if features and not self.taps:
            raise ValueError("this cache keeps no features: it was made without taps")
        entry = self.features_view(view) if features else view
        found: list[torch.Tensor | None] = [self.lookup(p, entry) for p in paths]
        missing = [i for i, t in enumerate(found) if t is None]
        self.hits += len(paths) - len(missing)
        if missing:
            self.misses += len(missing)
            self.teacher_calls += 1
            param = next(self.teacher.parameters(), None)
            was_training = self.teacher.training
            self.teacher.eval()
            # one image per forward: an output must not depend on which other images missed with it (the
            # kernels' choice can change with the batch size), or a resumed run, whose memory cache starts
            # empty, would be given other bits than the uninterrupted run
            for i in missing:
                x = load_input(i)[None]
                x = x.to(param.device, param.dtype) if param is not None else x
                with FeatureCapture(self.taps) as got:
                    found[i] = self.store(paths[i], view, self.teacher(x).float()[0])
                if self.taps:  # one forward pays for both entries
                    inner = self.store(paths[i], self.features_view(view), torch.cat(got, 1).float()[0])
                    found[i] = inner if features else found[i]
            self.teacher.train(was_training)
        return torch.stack([t for t in found])  # type: ignore[misc]

    def batch_crops(self, paths: Sequence[str | Path], crops: torch.Tensor, load_size: int,
                    crop_size: int, features: bool = False) -> torch.Tensor:
        """The teacher's outputs for a training batch's crops ((N, 3) top, left, flip), cut from its cached
        outputs for the whole images resized to ``load_size``: (N, 3, crop_size, crop_size) on the CPU.
        ``features``: the same crops of its features at the taps, whose stride must divide the offsets."""
        rows = [(int(top), int(left), bool(flip)) for top, left, flip in crops.tolist()]
        out: list[torch.Tensor | None] = [None] * len(rows)
        for mirrored in (False, True):
            idx = [i for i, row in enumerate(rows) if row[2] == mirrored]
            if not idx:
                continue
            view = f"resize{load_size}" + ("-mirror" if mirrored else "")
            full = self.outputs_for([paths[i] for i in idx], view,
                                    lambda j, idx=idx, m=mirrored: _view_input(paths[idx[j]], load_size, m),
                                    features)
            stride = load_size // full.shape[-1]
            for j, i in enumerate(idx):
                top, left, _ = rows[i]
                if mirrored:  # crop (top, left) of the image, mirrored = the mirror's crop from the right edge
                    left = load_size - left - crop_size
                if top % stride or left % stride or crop_size % stride:
                    raise ValueError(f"a crop at ({top}, {left}) of {crop_size} px is off the features' "
                                     f"{stride}-pixel grid")
                out[i] = crop(full[j], top // stride, left // stride, crop_size // stride)
        return torch.stack(out)  # type: ignore[arg-type]

    def summary(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "teacher_calls": self.teacher_calls}


def _view_input(path: str | Path, load_size: int, mirrored: bool) -> torch.Tensor:
    from crdtool.data.images import load_image
    from crdtool.data.transforms import eval_transform

    x = eval_transform(load_image(path), load_size)
    return x.flip(-1) if mirrored else x


def crop(x: torch.Tensor, top: int, left: int, size: int, flip: bool = False) -> torch.Tensor:
    """``size`` x ``size`` from (top, left) of (..., H, W), then a horizontal flip: the dataset's order."""
    x = x[..., top:top + size, left:left + size]
    return x.flip(-1) if flip else x


def crop_pair(x: torch.Tensor, y: torch.Tensor, top: int, left: int, size: int,
              flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The same crop (and horizontal flip) of an input and its cached teacher output, (..., H, W)."""
    return crop(x, top, left, size, flip), crop(y, top, left, size, flip)

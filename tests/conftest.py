import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("CRDTOOL_QUIET", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_data() -> Path:
    root = SHARED / "data"
    if not root.is_dir():
        pytest.skip(f"real image data not present at {root}")
    return root

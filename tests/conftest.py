import os
from pathlib import Path

import pytest
import torch

# Tests use tiny models (32-64 px, a few channels): one thread is fastest for them, and immune to a busy
# machine (OpenMP threads waiting on a core another process holds made steps 20x slower). Subprocesses too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_data() -> Path:
    root = SHARED / "data"
    if not root.is_dir():
        pytest.skip(f"real image data not present at {root}")
    return root

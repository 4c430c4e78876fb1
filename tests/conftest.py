import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def paper_layouts() -> dict:
    """Tables 4, 6, 16 and 17 of the paper: layouts, paper indices and backbone parameters."""
    return json.loads((DATA / "paper_layouts.json").read_text())


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)

import os
import sys
import warnings

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(autouse=True)
def _no_grad_two_threads():
    import torch

    torch.set_num_threads(2)
    with torch.no_grad():
        yield


@pytest.fixture
def repo():
    return REPO

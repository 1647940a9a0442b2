import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _isolated_outputs(tmp_path_factory):
    """Tests never write into book/results or the real run cache."""
    base = tmp_path_factory.mktemp("nlutils")
    old = {k: os.environ.get(k) for k in ("NLUTILS_RESULTS", "NLUTILS_CACHE", "NLUTILS_PROGRESS")}
    os.environ["NLUTILS_RESULTS"] = str(base / "results")
    os.environ["NLUTILS_CACHE"] = str(base / "cache")
    os.environ["NLUTILS_PROGRESS"] = "0"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def digits():
    from nlutils import data
    return data.load("digits")


def real_data(name):
    """Skip unless the real archive is reachable without a download."""
    from nlutils import data
    if data.find(name) is None:
        pytest.skip(f"{name}.npz not available (set NLUTILS_DATA)")
    return data.load(name, download=False)

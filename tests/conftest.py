import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _isolated_outputs(tmp_path_factory):
    """Tests never write into book/results or book/runs."""
    base = tmp_path_factory.mktemp("nlutils")
    old = {k: os.environ.get(k) for k in ("NLUTILS_RESULTS", "NLUTILS_PROGRESS", "NLUTILS_RUNS")}
    os.environ["NLUTILS_RESULTS"] = str(base / "results")
    os.environ["NLUTILS_RUNS"] = str(base / "runs")
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


@pytest.fixture(scope="session")
def toc_files():
    import yaml
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """``jupyter-book build . -W -n`` (warnings are errors) into a temporary folder, once."""
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", str(ROOT), "--path-output", str(out), "-W", "-n",
                           "--keep-going"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out / "_build" / "html"

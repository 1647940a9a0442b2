"""tools/build_book.py reports a chapter as stale when its notebook or its nlutils code changed."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_book", ROOT / "tools" / "build_book.py")
bb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bb)


def _nb(cells, meta=None):
    return {"cells": cells, "metadata": meta or {}, "nbformat": 4, "nbformat_minor": 5}


def test_stale_detection(tmp_path):
    src = tmp_path / "ch.ipynb"
    cells = [{"cell_type": "code", "source": "x = 1", "metadata": {}, "outputs": []}]
    src.write_text(json.dumps(_nb(cells)))
    train_hash = bb.file_hash(bb.PACKAGE_DIR / "train.py")
    meta = {"nlbook": {"notebook_source": bb.notebook_hash(src), "profile": "book",
                       "nlutils_modules": {"train.py": train_hash}}}
    out = tmp_path / "out.ipynb"
    out.write_text(json.dumps(_nb(cells, meta)))
    assert bb.stale_reasons(src, out) == []
    # outputs do not count, sources do
    cells2 = [dict(cells[0], outputs=[{"output_type": "stream", "name": "stdout", "text": "1"}])]
    src.write_text(json.dumps(_nb(cells2)))
    assert bb.stale_reasons(src, out) == []
    src.write_text(json.dumps(_nb([dict(cells[0], source="x = 2")])))
    assert "its notebook changed" in bb.stale_reasons(src, out)
    # a module that changed since execution
    src.write_text(json.dumps(_nb(cells)))
    meta["nlbook"]["nlutils_modules"]["train.py"] = "0" * 16
    out.write_text(json.dumps(_nb(cells, meta)))
    assert any("train.py" in r for r in bb.stale_reasons(src, out))
    meta["nlbook"]["nlutils_modules"]["train.py"] = train_hash
    meta["nlbook"]["profile"] = "smoke"
    out.write_text(json.dumps(_nb(cells, meta)))
    assert any("profile=smoke" in r for r in bb.stale_reasons(src, out))

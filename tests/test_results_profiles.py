import json
import os

import pytest

from nlutils import profiles, results


def test_save_writes_schema(tmp_path):
    p = results.save("demo", {"acc": {"ce": results.mean_std([80.0, 82.0])}}, profile="book",
                     parameters={"epochs": 3}, seeds=[0, 1], run_seconds=1.234, directory=tmp_path)
    rec = json.loads(p.read_text())
    assert p.name == "demo.json"
    assert rec["chapter"] == "demo" and rec["profile"] == "book"
    assert rec["metrics"]["acc"]["ce"] == {"mean": 81.0, "std": pytest.approx(1.41421356), "n": 2}
    prov = rec["provenance"]
    for key in ("parameters", "seeds", "git_commit", "nlutils_version", "torch_version",
                "run_seconds", "date", "nlutils_source"):
        assert key in prov
    assert prov["seeds"] == [0, 1] and prov["parameters"] == {"epochs": 3}


def test_dirty_means_uncommitted_code_not_the_page_being_written(tmp_path, monkeypatch):
    """An executed page and its record change while the chapter runs: only uncommitted code
    (nlutils, notebooks, tools) makes the reproduce box say "with uncommitted changes"."""
    import subprocess

    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,
                                    check=True, capture_output=True)
    for f in ("nlutils/train.py", "book/ch.ipynb"):
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_text("a\n")
    git("init", "-q"), git("add", "."), git("commit", "-qm", "x")
    monkeypatch.setattr(results, "REPO_ROOT", tmp_path)
    (tmp_path / "book/ch.ipynb").write_text("b\n")
    assert results.provenance()["git_dirty"] is False
    (tmp_path / "nlutils/train.py").write_text("b\n")
    assert results.provenance()["git_dirty"] is True


def test_non_book_profiles_do_not_overwrite_the_book(tmp_path):
    p = results.save("demo", {"x": 1}, profile="smoke", directory=tmp_path)
    assert p.name == "demo.smoke.json"
    assert not (tmp_path / "demo.json").exists()


def test_mean_std():
    assert results.mean_std([1.0]) == {"mean": 1.0, "std": 0.0, "n": 1}
    with pytest.raises(ValueError):
        results.mean_std([])
    assert results.fmt({"mean": 81.234, "std": 0.5}) == "81.23 ± 0.50"


PRESETS = {"smoke": dict(dataset="digits", epochs=1, seeds=[0], rate=0.2, device="cpu"),
           "book": dict(dataset="mnist", epochs=20, seeds=[0, 1, 2], rate=0.4, device="cpu"),
           "paper": dict(dataset="cifar10", epochs=120, seeds=[0, 1, 2], rate=0.4, device="cuda")}


def test_profile_defaults_and_explicit_overrides():
    cfg = profiles.resolve("book", PRESETS, dataset=None, epochs=5, seeds=None, rate=None, device=None)
    assert (cfg.dataset, cfg.epochs, cfg.seeds, cfg.rate) == ("mnist", 5, [0, 1, 2], 0.4)
    assert cfg.profile == "book"


@pytest.mark.parametrize("given,name", [
    (dict(dataset="svhn"), "dataset"), (dict(rate=1.0), "rate"), (dict(rate=-0.2), "rate"),
    (dict(epochs=0), "epochs"), (dict(seeds=[]), "seeds"), (dict(seeds=[-1]), "seeds"),
    (dict(device="tpu"), "device"),
])
def test_bad_parameters_name_themselves(given, name):
    with pytest.raises(ValueError, match=name):
        profiles.resolve("smoke", PRESETS, **given)


def test_unknown_profile_and_parameter():
    with pytest.raises(ValueError, match="profile"):
        profiles.resolve("fast", PRESETS)
    with pytest.raises(ValueError, match="learning_rate=0.1 is not a parameter.*The parameters are: dataset, device"):
        profiles.resolve("smoke", PRESETS, learning_rate=0.1)


def test_cuda_requested_without_gpu():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="device"):
        profiles.resolve("paper", PRESETS)  # paper defaults to cuda: refused here, clearly


def test_validate_other_parameters():
    with pytest.raises(ValueError, match="alpha"):
        profiles.validate({"alphas": [0, -1]})
    with pytest.raises(ValueError, match="T"):
        profiles.validate({"T": [[0.5, 0.6], [0.5, 0.5]]})
    with pytest.raises(ValueError, match="model"):
        profiles.validate({"model": "vgg"})
    profiles.validate({"alphas": [0, 5], "T": [[0.5, 0.5], [0.0, 1.0]], "model": "lenet5"})


def test_reproduce_box_lists_every_profile_and_the_run(tmp_path):
    results.save("demo", {"x": 1}, profile="book", seeds=[0, 1], run_seconds=90, directory=tmp_path)
    text = results.reproduce_box("demo", directory=tmp_path).data
    for profile in ("smoke", "book", "paper"):
        assert f"-p profile {profile}" in text
    assert "1.5 min" in text and "seeds [0, 1]" in text and text.startswith(":::{admonition}")



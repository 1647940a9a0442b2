"""Every bad chapter parameter is rejected before any training, under its own name; lists
given as strings by ``papermill -p`` are parsed."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from nlutils import profiles

ROOT = Path(__file__).resolve().parents[1]

# (chapter, parameter, value as `papermill -p` passes it)
BAD = [
    ("massive_noise", "max_examples", 0),
    ("massive_noise", "clean_per_batch", 0),
    ("massive_noise", "conv_alphas", "[0, -5]"),
    ("massive_noise", "blog_alpha", -1),
    ("massive_noise", "finding_alpha", -1),
    ("meta_reweight", "higher_seeds", "abc"),
    ("elr", "elr_plus_seeds", "abc"),
    ("loss_correction", "mnist_seeds", "abc"),
    ("benchmark", "secondary_seeds", "abc"),
    ("gradient_similarity", "a", -1),
    ("gradient_similarity", "ablation_epochs", 0),
    ("loss_correction", "mnist_epochs", 0),
    ("benchmark", "trusted_per_class", -5),
    ("elr", "track_rows", -1),
    ("loss_correction", "bounded_lrs", "[0.1, -1]"),
    ("loss_correction", "fixed_decay_lrs", "[]"),
    ("benchmark", "cleanlab_folds", 1),
    ("foundations", "rates", "[0.2, 1.3]"),
    ("foundations", "seeds", "[0, -1]"),
    ("gradient_similarity", "ablation_seeds", "[0, -2]"),
    ("gradient_similarity", "cnn_recipe", "fastcnn_fast"),
    ("gradient_similarity", "cnn_model", "resnet1000"),
    ("meta_reweight", "cifar_setting", "cifar10_sym400"),
    ("meta_reweight", "cifar_per_class", 0),
    ("meta_reweight", "cifar_seeds", "abc"),
]


@pytest.mark.notebooks
@pytest.mark.parametrize("chapter,name,value", BAD, ids=[f"{c}-{n}" for c, n, _ in BAD])
def test_bad_parameter_is_named_before_training(chapter, name, value, tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / f"{chapter}.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"profile": "book", name: value}, cwd=str(ROOT),
                            kernel_name="python3", progress_bar=False)
    e = err.value
    assert e.ename == "ValueError", (e.ename, e.evalue)
    assert e.evalue.startswith(f"{name}=") or f" {name}=" in e.evalue or f"{name} " in e.evalue, e.evalue
    assert "resolve(" in e.source or "Chapter(" in e.source, \
        "must fail where the parameters are resolved, before training"


def test_strings_from_papermill_are_parsed():
    presets = {"book": dict(rates=[0.4], seeds=[0], epochs=3, lr=1e-3, name="x", note=None)}
    cfg = profiles.resolve("book", presets, rates="[0.2, 0.6]", seeds="[0, 1]", epochs="5",
                           lr="3e-4", name="[1]", note="free text")
    assert cfg == SimpleNamespace(profile="book", rates=[0.2, 0.6], seeds=[0, 1], epochs=5, lr=3e-4,
                                  name="[1]", note="free text")
    with pytest.raises(ValueError, match="seeds"):
        profiles.resolve("book", presets, seeds="abc")
    with pytest.raises(ValueError, match="epochs"):
        profiles.resolve("book", presets, epochs="five")


def test_name_patterns_and_chapter_checks():
    presets = {"book": dict(higher_seeds=[], ablation_epochs=8, conv_steps=10, blog_alpha=5, a=4.0)}
    assert profiles.resolve("book", presets).higher_seeds == []  # empty means "skip"
    for name, value in [("higher_seeds", ["x"]), ("ablation_epochs", 0), ("conv_steps", -1),
                        ("blog_alpha", -1), ("a", -1)]:
        with pytest.raises(ValueError, match=name):
            profiles.resolve("book", presets, **{name: value})

    def even(name, v):
        if v % 2:
            raise ValueError(f"{name}={v} must be even")
    with pytest.raises(ValueError, match="conv_steps=11"):
        profiles.resolve("book", presets, checks={"conv_steps": even}, conv_steps=11)

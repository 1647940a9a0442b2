import numpy as np
import pytest
import torch

from nlutils import data
from conftest import real_data


def test_digits_is_normalised_nchw(digits):
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert abs(float(digits.x_train.mean())) < 1e-4
    assert abs(float(digits.x_train.std()) - 1) < 1e-2
    assert digits.num_classes == 10


@pytest.mark.parametrize("name,shape,counts", [
    ("mnist", (60000, 1, 28, 28), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]),
    ("fashion_mnist", (60000, 1, 28, 28), [6000] * 10),
    ("cifar10", (50000, 3, 32, 32), [5000] * 10),
])
def test_real_archives(name, shape, counts):
    ds = real_data(name)
    assert tuple(ds.x_train.shape) == shape
    assert torch.bincount(ds.y_train).tolist() == counts
    # training-set normalisation: zero mean, unit std per channel
    m = ds.x_train.mean(dim=(0, 2, 3))
    assert torch.allclose(m, torch.zeros_like(m), atol=1e-3)


def test_cifar10_layout_is_rgb_chw():
    ds = real_data("cifar10")
    # published per-channel means (0.4914, 0.4822, 0.4465) of the raw pixels
    assert np.allclose(ds.mean, (0.4914, 0.4822, 0.4465), atol=5e-4)
    assert ds.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]


def test_cifar10n_labels_rates():
    if data.find("cifar10n_labels") is None:
        pytest.skip("cifar10n_labels.npz not available")
    clean = data.cifar10n_labels("clean")
    worse = data.cifar10n_labels("worse")
    assert abs(float((worse != clean).double().mean()) - 0.4021) < 1e-3
    with pytest.raises(ValueError, match="kind"):
        data.cifar10n_labels("best")


def _write(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


def _good_arrays():
    rng = np.random.default_rng(0)
    return dict(x_train=rng.integers(0, 255, (60000, 28, 28), dtype=np.uint8),
                y_train=np.arange(60000) % 10, x_test=rng.integers(0, 255, (10000, 28, 28), dtype=np.uint8),
                y_test=np.arange(10000) % 10)


def test_loader_reads_a_valid_archive_from_root(tmp_path):
    _write(tmp_path / "mnist.npz", **_good_arrays())
    ds = data.load("mnist", root=tmp_path, download=False)
    assert ds.x_train.shape == (60000, 1, 28, 28)


def test_loader_rejects_wrong_shape(tmp_path):
    a = _good_arrays()
    a["x_train"] = a["x_train"][:100]
    _write(tmp_path / "mnist.npz", **a)
    with pytest.raises(ValueError, match="x_train has shape"):
        data.load("mnist", root=tmp_path, download=False)


def test_loader_rejects_missing_class(tmp_path):
    a = _good_arrays()
    a["y_train"] = np.zeros(60000, dtype=np.int64)
    _write(tmp_path / "mnist.npz", **a)
    with pytest.raises(ValueError, match="every one of the 10 classes"):
        data.load("mnist", root=tmp_path, download=False)


def test_loader_rejects_corrupt_file(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(ValueError, match="not a readable .npz"):
        data.load("mnist", root=tmp_path, download=False)


def test_loader_rejects_truncated_file(tmp_path):
    good = _write(tmp_path / "full.npz", **_good_arrays()).read_bytes()
    (tmp_path / "mnist.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError):
        data.load("mnist", root=tmp_path, download=False)


def test_missing_file_error_names_file_folder_and_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("NLUTILS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        data.load("fashion_mnist", root=tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert "fashion_mnist.npz" in msg and "nowhere" in msg and "NLUTILS_DATA" in msg


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset='svhn'"):
        data.load("svhn")


def test_trusted_split_is_balanced_and_disjoint(digits):
    trusted, rest = data.trusted_split(digits.y_train, per_class=5, seed=0)
    assert torch.bincount(digits.y_train[trusted]).tolist() == [5] * 10
    assert len(set(trusted.tolist()) & set(rest.tolist())) == 0
    assert len(trusted) + len(rest) == len(digits.y_train)
    again, _ = data.trusted_split(digits.y_train, per_class=5, seed=0)
    assert torch.equal(trusted, again)
    with pytest.raises(ValueError, match="fewer than per_class"):
        data.trusted_split(digits.y_train, per_class=10_000)


def test_validation_split_is_stratified(digits):
    val, train = data.validation_split(len(digits.y_train), 0.2, seed=1, labels=digits.y_train)
    frac = torch.bincount(digits.y_train[val], minlength=10) / torch.bincount(digits.y_train, minlength=10)
    assert torch.all((frac - 0.2).abs() < 0.02)
    assert len(set(val.tolist()) & set(train.tolist())) == 0
    assert len(val) + len(train) == len(digits.y_train)
    with pytest.raises(ValueError, match="fraction"):
        data.validation_split(10, 1.5)

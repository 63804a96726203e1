"""The CIFAR-10 reader, the labeled/unlabeled split and the CIFAR ResNet-18, on CPU and offline:
every data set here is generated in tmp_path and download is never attempted."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from data import cifar
from data.cifar import CIFAR_FOLDER, DOWNLOAD_URL, MEAN, STD, load_cifar10, split_labeled
from data.synthetic import make_cifar_like
from models.resnet_cifar import ResNet18
from utils.errors import UserError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_cifar_like(tmp_path, n_train=50, n_test=10, seed=0)


def _rewrite(root: Path, name: str, **changes: Any) -> None:
    path = root / CIFAR_FOLDER / name
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch.update({key.encode(): value for key, value in changes.items()})
    path.write_bytes(pickle.dumps(batch, protocol=2))


def test_reader_returns_uint8_images_in_file_order(root: Path) -> None:
    data = load_cifar10(root, download=False)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (50, 3, 32, 32)
    assert data.train_labels.dtype == torch.int64 and data.train_labels.shape == (50,)
    assert data.test_images.shape == (10, 3, 32, 32) and data.test_labels.shape == (10,)
    with open(root / CIFAR_FOLDER / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")
    rows = len(first[b"labels"])
    assert data.train_labels[:rows].tolist() == first[b"labels"]
    assert torch.equal(data.train_images[:rows].reshape(rows, -1), torch.from_numpy(first[b"data"]))


@pytest.mark.parametrize("bad", [np.zeros((10, 3000), np.uint8), np.zeros((10, 3072), np.float32),
                                 np.zeros(3072, np.uint8), "not an array"])
def test_wrong_data_shape_names_the_file(root: Path, bad: Any) -> None:
    _rewrite(root, "data_batch_3", data=bad)
    with pytest.raises(UserError, match=r"data_batch_3.*3072"):
        load_cifar10(root, download=False)


@pytest.mark.parametrize("labels", [[0] * 9, [10] * 10, [-1] * 10, None])
def test_wrong_labels_name_the_file(root: Path, labels: Any) -> None:
    _rewrite(root, "test_batch", data=np.zeros((10, 3072), np.uint8), labels=labels)
    with pytest.raises(UserError, match=r"test_batch.*labels"):
        load_cifar10(root, download=False)


def test_unreadable_file_names_the_file(root: Path) -> None:
    (root / CIFAR_FOLDER / "batches.meta").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="batches.meta"):
        load_cifar10(root, download=False)


class Payload:
    """A pickle that creates a file when it is loaded: what a crafted data set could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("reader", ["load", "demo"])
def test_a_batch_file_that_would_run_code_is_refused_and_never_runs_it(root: Path, tmp_path: Path,
                                                                       reader: str) -> None:
    marker = tmp_path / "ran"
    path = root / CIFAR_FOLDER / "data_batch_1"
    path.write_bytes(pickle.dumps({b"batch_label": b"synthetic", b"data": Payload(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError, match=r"data_batch_1.*asks for .*never holds|holds CIFAR-10 files "
                                         r"this generator did not write"):
        if reader == "load":
            load_cifar10(root, download=False)
        else:  # the demo reads the files it finds before it writes its own
            make_cifar_like(root, n_train=50, n_test=10, seed=1)
    assert not marker.exists()


def test_missing_files_say_where_they_go(tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:  # entry scripts print it without a traceback
        load_cifar10(tmp_path, download=False)
    message = str(caught.value)
    for part in (str(tmp_path / CIFAR_FOLDER), "data_batch_1", "test_batch", DOWNLOAD_URL):
        assert part in message


def test_failed_download_says_where_the_files_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*_: Any, **__: Any) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar.torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError, match=r"(?s)unreachable.*data_batch_1.*cifar-10-python\.tar\.gz"):
        load_cifar10(tmp_path, download=True)


def _labels(per_class: int = 100) -> torch.Tensor:
    order = torch.randperm(10 * per_class, generator=torch.Generator().manual_seed(0))
    return torch.arange(10).repeat_interleave(per_class)[order]


@pytest.mark.parametrize("balanced", [False, True])
def test_split_is_a_sorted_partition(balanced: bool) -> None:
    labels = _labels()
    labeled, unlabeled = split_labeled(labels, 0.1, balanced, seed=0)
    assert len(labeled) == 100 and len(unlabeled) == 900
    assert torch.equal(labeled, labeled.sort().values) and torch.equal(unlabeled, unlabeled.sort().values)
    assert torch.equal(torch.cat([labeled, unlabeled]).sort().values, torch.arange(1000))


def test_balanced_split_takes_the_same_number_per_class() -> None:
    labeled, _ = split_labeled(_labels(), 0.105, balanced=True, seed=0)  # 105 // 10 = 10 per class
    assert _labels()[labeled].bincount(minlength=10).tolist() == [10] * 10


def test_split_is_deterministic_per_seed() -> None:
    labels = _labels()
    for balanced in (False, True):
        first, _ = split_labeled(labels, 0.05, balanced, seed=3)
        assert torch.equal(first, split_labeled(labels, 0.05, balanced, seed=3)[0])
        assert not torch.equal(first, split_labeled(labels, 0.05, balanced, seed=4)[0])


def test_split_refuses_impossible_requests() -> None:
    labels = _labels()
    labels = labels[labels != 7]
    with pytest.raises(UserError, match="class 7"):
        split_labeled(labels, 0.5, balanced=True, seed=0)
    with pytest.raises(UserError, match="fraction"):
        split_labeled(labels, 1.5, balanced=False, seed=0)


def test_resnet18_shape_and_size() -> None:
    model = ResNet18(10, MEAN, STD).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (4, 10)
        assert torch.allclose(model(images.float()), logits)  # uint8 and float in [0, 255] agree
    assert 11.0e6 <= sum(p.numel() for p in model.parameters()) <= 11.3e6
    assert "mean" not in model.state_dict()  # normalisation constants are not checkpointed


def test_resnet18_channels_last_bf16() -> None:
    model = ResNet18(10, MEAN, STD).eval().to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
    assert logits.shape == (4, 10) and torch.isfinite(logits.float()).all()

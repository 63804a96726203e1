"""The generated stand-ins must look to the loaders exactly like the real data sets, be the same
bytes for the same parameters, and be reused instead of rewritten on every demo run."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import synthetic
from data.cifar import CIFAR_CLASSES, CIFAR_FOLDER, load_cifar10
from data.camvid import IGNORE_INDEX, NUM_CLASSES
from data.synthetic import make_cifar_like, make_street_scenes, render_street_scene
from utils.errors import UserError

SIZE = (96, 72)
COUNTS = {"train": 4, "val": 2, "test": 2}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_street_scenes(tmp_path_factory.mktemp("street"), COUNTS, unlabeled=3, size=SIZE, seed=1)


def test_street_layout_matches_camvid(scenes: Path) -> None:
    for split, count in COUNTS.items():
        names = sorted(p.name for p in (scenes / split).glob("*.png"))
        assert names == [f"synth_{split}_{i:04d}.png" for i in range(count)]
        assert sorted(p.name for p in (scenes / f"{split}_labels").glob("*.png")) == names
        for name in names:
            image, label = Image.open(scenes / split / name), Image.open(scenes / f"{split}_labels" / name)
            assert (image.mode, image.size) == ("RGB", SIZE)
            assert (label.mode, label.size) == ("L", SIZE)
            assert np.array(label).max() <= IGNORE_INDEX
    unlabeled = sorted(p.name for p in (scenes / "unlabeled" / "train").glob("*.png"))
    assert unlabeled == [f"synth_unl_{i:04d}.png" for i in range(3)]
    assert Image.open(scenes / "unlabeled" / "train" / unlabeled[0]).size == SIZE


def test_every_class_and_some_void_appear() -> None:
    seen = np.zeros(IGNORE_INDEX + 1, bool)
    for index in range(20):
        image, label = render_street_scene(SIZE, np.random.default_rng([7, index]))
        assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
        assert label.shape == (SIZE[1], SIZE[0]) and label.dtype == np.uint8
        seen[np.unique(label)] = True
    assert seen.all(), f"classes never drawn: {np.flatnonzero(~seen).tolist()}"
    assert NUM_CLASSES == IGNORE_INDEX


def test_street_scenes_are_deterministic(scenes: Path, tmp_path: Path) -> None:
    again = make_street_scenes(tmp_path / "again", COUNTS, unlabeled=3, size=SIZE, seed=1)
    assert _tree_bytes(again) == _tree_bytes(scenes)
    other = make_street_scenes(tmp_path / "other", {"train": 1}, unlabeled=0, size=SIZE, seed=2)
    assert (other / "train" / "synth_train_0000.png").read_bytes() != (
        scenes / "train" / "synth_train_0000.png").read_bytes()


def test_finished_set_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_street_scenes(tmp_path, {"train": 2}, unlabeled=1, size=SIZE)
    before = _tree_bytes(root)
    monkeypatch.setattr(synthetic, "render_street_scene", _must_not_render)
    assert make_street_scenes(tmp_path, {"train": 2}, unlabeled=1, size=SIZE) == root
    assert _tree_bytes(root) == before


def _must_not_render(*_: object) -> None:
    raise AssertionError("a finished set was drawn again")


def test_new_parameters_or_a_missing_marker_regenerate(tmp_path: Path) -> None:
    make_street_scenes(tmp_path, {"train": 3, "val": 1}, unlabeled=2, size=SIZE)
    make_street_scenes(tmp_path, {"train": 1}, unlabeled=0, size=SIZE)
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["synth_train_0000.png"]
    assert not list((tmp_path / "val").glob("*.png")) and not list((tmp_path / "unlabeled").rglob("*.png"))
    (tmp_path / synthetic.MARKER).write_text('{"writing": {}}')  # as after a run killed before it finished
    make_street_scenes(tmp_path, {"train": 1}, unlabeled=0, size=SIZE)
    assert "writing" not in json.loads((tmp_path / synthetic.MARKER).read_text())


def test_the_demo_never_writes_into_a_folder_of_real_data(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "0001TP_006690.png").write_bytes(b"a real image")
    with pytest.raises(UserError, match="holds files this generator did not write"):
        make_street_scenes(tmp_path, {"train": 1}, unlabeled=0, size=SIZE)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["0001TP_006690.png", "train"]


def test_bad_street_parameters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="splits"):
        make_street_scenes(tmp_path, {"training": 2})
    with pytest.raises(ValueError, match="non-negative"):
        make_street_scenes(tmp_path, {"train": -1})


def test_cifar_like_is_in_the_real_format(tmp_path: Path) -> None:
    root = make_cifar_like(tmp_path, n_train=60, n_test=20, seed=3)
    folder = root / CIFAR_FOLDER
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert set(batch) == {b"data", b"labels", b"batch_label", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (12, 3072)
    assert len(batch[b"labels"]) == len(batch[b"filenames"]) == 12
    with open(folder / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="bytes")[b"label_names"] == [n.encode() for n in CIFAR_CLASSES]
    data = load_cifar10(root, download=False)
    assert data.train_images.shape == (60, 3, 32, 32) and data.test_images.shape == (20, 3, 32, 32)
    assert data.class_names == CIFAR_CLASSES
    assert data.train_labels.bincount(minlength=10).tolist() == [6] * 10
    assert data.train_images.float().std() > 20  # pictures, not blank rows


def test_cifar_like_is_deterministic_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _tree_bytes(make_cifar_like(tmp_path / "a", n_train=30, n_test=10))
    assert _tree_bytes(make_cifar_like(tmp_path / "b", n_train=30, n_test=10)) == first
    monkeypatch.setattr(synthetic, "_cifar_pictures", _must_not_render)
    make_cifar_like(tmp_path / "a", n_train=30, n_test=10)
    assert _tree_bytes(tmp_path / "a") == first


def test_real_cifar_files_are_never_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / CIFAR_FOLDER
    folder.mkdir()
    real = {b"batch_label": b"training batch 1 of 5", b"labels": [0], b"data": np.zeros((1, 3072), np.uint8)}
    (folder / "data_batch_1").write_bytes(pickle.dumps(real, protocol=2))
    with pytest.raises(UserError, match="did not write"):
        make_cifar_like(tmp_path, n_train=10, n_test=10)

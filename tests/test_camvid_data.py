"""Loading the thesis layout, and the messages for every kind of bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.camvid import IGNORE_INDEX
from data.datasets import load_frames, load_subset
from utils.errors import UserError
from utils.io import write_png

from conftest import TINY_SIZE

WIDTH, HEIGHT = TINY_SIZE


def read_label(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def first(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


# ----------------------------------------------------------------------------- loading

def test_load_split_gives_uint8_tensors_names_and_source_size(tiny_scenes: Path) -> None:
    train = load_subset("camvid", tiny_scenes, "train")
    assert train.images.shape == (4, 3, HEIGHT, WIDTH) and train.images.dtype == torch.uint8
    assert train.labels.shape == (4, HEIGHT, WIDTH) and train.labels.dtype == torch.uint8
    assert train.names == [p.stem for p in sorted((tiny_scenes / "train").iterdir())]
    assert train.source_sizes == [(WIDTH, HEIGHT)] * 4 and train.sizes.tolist() == [[HEIGHT, WIDTH]] * 4
    assert int(train.labels.max()) <= IGNORE_INDEX
    # Tensors hold the files' pixels unchanged.
    name = train.names[1]
    with Image.open(tiny_scenes / "train" / f"{name}.png") as image:
        assert torch.equal(train.images[1].permute(1, 2, 0), torch.from_numpy(np.array(image.convert("RGB"))))
    assert torch.equal(train.labels[1], torch.from_numpy(read_label(tiny_scenes / "train_labels" / f"{name}.png")))


def test_image_scale_halves_images_and_labels_by_nearest(tiny_scenes: Path) -> None:
    full = load_subset("camvid", tiny_scenes, "val")
    half = load_subset("camvid", tiny_scenes, "val", scale=0.5)
    assert half.images.shape == (2, 3, HEIGHT // 2, WIDTH // 2)
    assert half.labels.shape == (2, HEIGHT // 2, WIDTH // 2)
    assert half.source_sizes == [(WIDTH, HEIGHT)] * 2  # pseudo-labels are written at the size on disk
    assert int(half.labels.max()) <= IGNORE_INDEX
    # Nearest resizing only picks existing values; it never invents a class between two others.
    for small, large in zip(half.labels, full.labels):
        assert set(small.unique().tolist()) <= set(large.unique().tolist())


def test_subset_keeps_images_labels_and_names_together(tiny_scenes: Path) -> None:
    train = load_subset("camvid", tiny_scenes, "train")
    part = train.subset([3, 1])
    assert part.names == [train.names[3], train.names[1]]
    assert torch.equal(part.images[0], train.images[3]) and torch.equal(part.labels[1], train.labels[1])
    assert len(part) == 2 and part.source_sizes == [train.source_sizes[3], train.source_sizes[1]]


def test_load_unlabeled_has_no_labels_and_respects_the_limit(tiny_scenes: Path) -> None:
    frames = load_frames("camvid", tiny_scenes)
    assert frames.labels is None and len(frames) == 3 and frames.images.shape == (3, 3, HEIGHT, WIDTH)
    limited = load_frames("camvid", tiny_scenes, limit=2)
    assert limited.names == frames.names[:2]


# ----------------------------------------------------------------------------- bad input

def test_an_image_without_a_label_is_named(scenes: Path) -> None:
    label = first(scenes / "train_labels")
    label.unlink()
    with pytest.raises(UserError, match=label.stem) as error:
        load_subset("camvid", scenes, "train")
    assert "has no label" in str(error.value)


def test_a_label_without_an_image_is_named(scenes: Path) -> None:
    image = first(scenes / "train")
    image.unlink()
    with pytest.raises(UserError, match=image.stem) as error:
        load_subset("camvid", scenes, "train")
    assert "has no image" in str(error.value)


def test_a_missing_folder_explains_the_layout(scenes: Path) -> None:
    shutil.rmtree(scenes / "val")
    with pytest.raises(UserError, match="does not exist") as error:
        load_subset("camvid", scenes, "val")
    assert str(scenes / "val") in str(error.value) and "--demo" in str(error.value)


def test_an_empty_folder_says_it_holds_no_images(scenes: Path) -> None:
    for path in (scenes / "test_labels").iterdir():
        path.unlink()
    (scenes / "test_labels" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="holds no images"):
        load_subset("camvid", scenes, "test")


def test_a_colour_label_points_to_mask_maker(scenes: Path) -> None:
    label = first(scenes / "train_labels")
    write_png(label, np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    with pytest.raises(UserError, match="mask_maker") as error:
        load_subset("camvid", scenes, "train")
    assert label.name in str(error.value)


def test_label_values_above_void_are_named(scenes: Path) -> None:
    label = first(scenes / "val_labels")
    array = read_label(label).copy()
    array[0, 0] = IGNORE_INDEX + 1
    write_png(label, array)
    with pytest.raises(UserError, match=label.name) as error:
        load_subset("camvid", scenes, "val")
    assert str(IGNORE_INDEX + 1) in str(error.value)


@pytest.mark.parametrize("folder", ["train", "train_labels"])
def test_a_truncated_png_is_named(scenes: Path, folder: str) -> None:
    path = first(scenes / folder)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=path.name) as error:
        load_subset("camvid", scenes, "train")
    assert "truncated" in str(error.value) or "damaged" in str(error.value)


def test_a_label_of_another_size_than_its_image_is_an_error(scenes: Path) -> None:
    label = first(scenes / "test_labels")
    write_png(label, np.zeros((HEIGHT // 2, WIDTH), np.uint8))
    with pytest.raises(UserError, match=label.name) as error:
        load_subset("camvid", scenes, "test")
    assert f"{WIDTH}x{HEIGHT // 2}" in str(error.value)


def test_hidden_and_non_image_files_are_ignored(scenes: Path) -> None:
    (scenes / "train" / ".DS_Store.png").write_bytes(b"junk")
    (scenes / "train_labels" / "README.txt").write_text("labels")
    assert len(load_subset("camvid", scenes, "train")) == 4


def test_two_frames_of_one_name_are_refused_naming_both(scenes: Path) -> None:
    frames = scenes / "unlabeled" / "train"
    first = sorted(frames.glob("*.png"))[0]
    Image.open(first).convert("RGB").save(first.with_suffix(".jpg"))  # would share first's pseudo-label file
    with pytest.raises(UserError, match=rf"{first.stem}\.jpg and {first.name} in .*unlabeled/train have the same "
                                        r"name before the extension"):
        load_frames("camvid", scenes)

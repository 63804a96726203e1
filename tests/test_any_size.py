"""Sets of images of mixed sizes and orientations: each image is held, cropped, evaluated, pseudo-labeled and
predicted at its own size; a set of one size keeps its one tensor."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import predict
import semisup_cam
from data.segmentation import index_lookup, load_set
from data.synthetic import render_street_scene
from data.transforms import scale_crop_flip
from utils.io import write_png

MEAN = (100.0, 110.0, 120.0)
SIZES = [(40, 30), (30, 40), (40, 30), (50, 20), (36, 36)]  # (width, height): landscape, portrait, square


def photos(root: Path, sizes: list[tuple[int, int]], labels: bool = True, seed: int = 0) -> list[Path]:
    """Street scenes as JPEG photos (and PNG labels) of the given sizes."""
    rng = np.random.default_rng(seed)
    paths = []
    for i, size in enumerate(sizes):
        image, label = render_street_scene((max(size[0], 32), max(size[1], 32)), rng)
        image, label = image[: size[1], : size[0]], label[: size[1], : size[0]]
        (root / "images").mkdir(parents=True, exist_ok=True)
        paths.append(root / "images" / f"photo{i:02d}.jpg")
        Image.fromarray(image).save(paths[-1], quality=95)
        if labels:
            write_png(root / "labels" / f"photo{i:02d}.png", label)
    return paths


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("mixed")
    return root, photos(root, SIZES)


def label_paths(root: Path, images: list[Path]) -> list[Path]:
    return [root / "labels" / f"{path.stem}.png" for path in images]


# ----------------------------------------------------------------------------- storage

def test_each_image_is_held_at_its_own_size_and_batches_group_equal_sizes(mixed: tuple[Path, list[Path]]) -> None:
    root, images = mixed
    data = load_set(images, label_paths(root, images), index_lookup(11), 1.0)
    assert not data.one_size and data.images.ndim == 1
    assert data.sizes.tolist() == [[h, w] for w, h in SIZES] and data.source_sizes == SIZES
    for i, path in enumerate(images):
        assert torch.equal(data.image(i).permute(1, 2, 0), torch.from_numpy(np.array(Image.open(path).convert("RGB"))))
        assert torch.equal(data.label(i), torch.from_numpy(np.array(Image.open(label_paths(root, images)[i]))))
    assert data.groups(8) == [[0, 2], [1], [3], [4]] and data.groups(1) == [[0], [2], [1], [3], [4]]
    batch_images, batch_labels = data.stack([0, 2])
    assert batch_images.shape == (2, 3, 30, 40) and torch.equal(batch_labels[1], data.label(2))
    same = data.subset([2, 0])  # images of one size become one tensor again
    assert same.one_size and same.images.shape == (2, 3, 30, 40) and same.names == ["photo02", "photo00"]
    part = data.subset([4, 1])
    assert not part.one_size and torch.equal(part.image(1), data.image(1)) and part.source_sizes == [SIZES[4], SIZES[1]]


def test_a_batch_of_mixed_sizes_is_padded_with_the_mean_colour_and_ignore(mixed: tuple[Path, list[Path]]) -> None:
    root, images = mixed
    data = load_set(images, label_paths(root, images), index_lookup(11), 1.0)
    batch, labels, sizes = data.gather(torch.tensor([1, 3]), MEAN, 11)
    assert batch.shape == (2, 3, 40, 50) and labels.shape == (2, 40, 50) and sizes.tolist() == [[40, 30], [20, 50]]
    assert torch.equal(batch[0, :, :40, :30], data.image(1)) and torch.equal(labels[1, :20, :50], data.label(3))
    assert (labels[0, :, 30:] == 11).all() and (labels[1, 20:] == 11).all()
    assert (batch[1, :, 20:] == torch.tensor([100, 110, 120], dtype=torch.uint8).view(3, 1, 1)).all()


def test_a_crop_of_a_padded_batch_takes_each_image_within_its_own_size() -> None:
    # Labels that number the pixels: at scale 1 a crop larger than the image holds every pixel once, in place
    # (mirrored or not), and nothing of the padding or of another image.
    heights, widths = [10, 12], [12, 10]
    batch = torch.full((2, 3, 12, 12), 7, dtype=torch.uint8)
    labels = torch.full((2, 12, 12), 200, dtype=torch.uint8)  # the batch's padding: values no pixel has
    grids = [torch.arange(h * w, dtype=torch.uint8).view(h, w) for h, w in zip(heights, widths)]
    for k, (h, w) in enumerate(zip(heights, widths)):
        labels[k, :h, :w] = grids[k]
    for seed in range(6):
        images, out = scale_crop_flip(batch, labels, 16, MEAN, 255, torch.Generator().manual_seed(seed),
                                      scale=(1.0, 1.0), sizes=torch.tensor([[10, 12], [12, 10]]))
        for k, grid in enumerate(grids):
            valid = out[k] != 255
            rows, cols = valid.any(1).nonzero().squeeze(1), valid.any(0).nonzero().squeeze(1)
            inside = out[k, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].to(torch.uint8)
            assert torch.equal(inside, grid) or torch.equal(inside, grid.flip(1))
            assert int(valid.sum()) == grid.numel()
            assert torch.equal(images[k][:, ~valid], torch.tensor(MEAN).view(3, 1).expand(3, int((~valid).sum())))


def test_a_set_of_one_size_keeps_one_tensor_and_its_batches_are_views(tiny_scenes: Path) -> None:
    from data.datasets import load_subset
    data = load_subset("camvid", tiny_scenes, "train")
    assert data.one_size and data.images.shape[0] == 4
    images, labels = data.stack([1, 2])
    assert images.data_ptr() == data.images[1].data_ptr()  # a slice, not a copy
    batch, batch_labels, sizes = data.gather(torch.tensor([3, 0]), MEAN, 11)
    assert sizes is None and torch.equal(batch, data.images[[3, 0]]) and torch.equal(batch_labels, data.labels[[3, 0]])


def test_max_side_shrinks_large_photos_and_keeps_their_size_on_disk(mixed: tuple[Path, list[Path]]) -> None:
    root, images = mixed
    data = load_set(images, label_paths(root, images), index_lookup(11), 1.0, max_side=25)
    assert data.sizes.tolist() == [[19, 25], [25, 19], [19, 25], [10, 25], [25, 25]]
    assert data.source_sizes == SIZES
    assert set(data.label(3).unique().tolist()) <= set(data_full_label(root, images, 3).unique().tolist())


def data_full_label(root: Path, images: list[Path], i: int) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(label_paths(root, images)[i])))


def test_a_cached_set_of_mixed_sizes_equals_the_decoded_one(mixed: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, images = mixed
    decoded = load_set(images, label_paths(root, images), index_lookup(11), 0.5)
    cached = load_set(images, label_paths(root, images), index_lookup(11), 0.5, cache=tmp_path)
    again = load_set(images, label_paths(root, images), index_lookup(11), 0.5, cache=tmp_path)
    for data in (cached, again):
        assert torch.equal(data.images, decoded.images) and torch.equal(data.labels, decoded.labels)
        assert torch.equal(data.sizes, decoded.sizes)


# ----------------------------------------------------------------------------- your own photos

@pytest.fixture(scope="module")
def own_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder data of 10 labeled photos and 4 unlabeled ones, landscape and portrait, of several sizes."""
    root = tmp_path_factory.mktemp("photos")
    sizes = [(64, 48), (48, 64), (72, 40), (40, 72), (56, 56)] * 2
    photos(root, sizes)
    unlabeled = photos(root / "u", [(60, 44), (44, 60), (64, 48), (50, 70)], labels=False, seed=1)
    (root / "unlabeled").mkdir()
    for path in unlabeled:
        path.rename(root / "unlabeled" / path.name.replace("photo", "frame"))
    fold = np.array([0, 1, 1, 2, 0, 2, 0, 0, 0, 2, 0, 255], np.uint8)  # street classes into three, Void: ignore
    for path in (root / "labels").glob("*.png"):
        write_png(path, fold[np.array(Image.open(path))])
    (root / "classes.json").write_text(json.dumps({"names": ["built", "open", "ground"], "ignore": 255}))
    return root


def test_photos_of_mixed_sizes_train_a_teacher_and_an_iteration_and_predict_at_their_own_size(
        own_photos: Path, tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    semisup_cam.main(main_args(own_photos, tmp_path, dataset="folder", val_size=2, no_iter=1, pseudo_epochs=1,
                               finetune_epochs=1, pseudo_root=tmp_path / "pseudo", batch_size=4))
    pseudo = tmp_path / "pseudo" / "train_pseudoIt1"
    for frame in sorted((own_photos / "unlabeled").glob("*.jpg")):
        assert Image.open(pseudo / f"{frame.stem}.png").size == Image.open(frame).size
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"] == "your own data" and len(summary["iterations"]) == 1
    out = tmp_path / "predicted"
    predict.main(["--checkpoint", str(tmp_path / "ckpt" / "teacher_best.pth.tar"), "--images",
                  str(own_photos / "unlabeled"), "--out", str(out), "--batch-size", "3"])
    for frame in sorted((own_photos / "unlabeled").glob("*.jpg")):
        index = Image.open(out / "index" / f"{frame.stem}.png")
        assert index.size == Image.open(frame).size and np.array(index).max() <= 2
        assert Image.open(out / "colour" / f"{frame.stem}.png").size == index.size


def test_an_online_student_learns_from_photos_of_mixed_sizes(own_photos: Path, tmp_path: Path,
                                                             main_args: Callable[..., list[str]]) -> None:
    semisup_cam.main(main_args(own_photos, tmp_path, dataset="folder", val_size=2, no_iter=1, pseudo_epochs=1,
                               student_schedule="unimatch", batch_size=4, max_side=60))
    entry = json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"][0]
    assert entry["pseudo_frames"] == 4 and entry["pseudo_miou"] is None  # frames without labels

"""Pascal VOC 2012 (--dataset=pascal) on a generated VOC2012 tree of JPEG photos of mixed sizes and orientations
with palette masks whose object boundaries are 255; and the published split lists."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

import predict
import semisup_cam
from data import pascal
from data.datasets import load_subset
from data.segmentation import read_split_file, voc_palette
from data.synthetic import make_voc_tree
from utils.errors import UserError

TRAIN = [(64, 48), (48, 64), (64, 40), (40, 64), (56, 56), (64, 48), (48, 64), (60, 45)]
VAL = [(64, 48), (48, 64), (50, 50)]
SPLITS = Path(__file__).resolve().parents[1] / "data" / "splits" / "pascal"


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_voc_tree(tmp_path_factory.mktemp("VOC2012"), {"train": TRAIN, "val": VAL})


@pytest.fixture(scope="module")
def voc_aug(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_voc_tree(tmp_path_factory.mktemp("VOC2012aug"), {"train": TRAIN, "val": VAL}, augmented=4)


def test_train_is_the_fine_set_or_the_augmented_one_and_test_is_val(voc: Path, voc_aug: Path) -> None:
    images, labels = pascal.files(voc, "train")
    assert [p.stem for p in images] == (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    assert all(p.parent.name == "SegmentationClass" for p in labels) and pascal.files(voc, "val") is None
    aug_images, aug_labels = pascal.files(voc_aug, "train")
    assert len(aug_images) == len(TRAIN) + 4 and all(p.parent.name == "SegmentationClassAug" for p in aug_labels)
    assert not {p.stem for p in aug_images} & {p.stem for p in pascal.files(voc_aug, "test")[0]}
    test = load_subset("pascal", voc, "test")
    assert [size for size in test.source_sizes] == VAL and not test.one_size


def test_palette_masks_give_voc_indices_and_their_boundaries_become_ignore(voc: Path) -> None:
    train = load_subset("pascal", voc, "train")
    raw = np.array(Image.open(voc / "SegmentationClass" / f"{train.names[0]}.png"))
    assert Image.open(voc / "SegmentationClass" / f"{train.names[0]}.png").mode == "P" and (raw == 255).any()
    assert np.array_equal(train.label(0).numpy(), np.where(raw == 255, 21, raw))
    assert pascal.CLASSES.num_classes == 21 and pascal.CLASSES.colours[:21] == voc_palette(21)


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "ImageSets/Segmentation/train.txt").unlink(), r"ImageSets/Segmentation/train.txt does not "
                                                                        r"exist.*VOC2012 folder"),
    (lambda root: next((root / "JPEGImages").glob("2007_*.jpg")).unlink(), r"1 files of the 8 train images and masks "
                                                                           r"are missing: .*JPEGImages/2007_0000"),
    (lambda root: next((root / "SegmentationClass").glob("2007_*.png")).unlink(), r"are missing: .*SegmentationClass/"),
])
def test_a_wrong_layout_names_what_is_missing(tmp_path: Path, damage: Callable[[Path], None], message: str) -> None:
    root = make_voc_tree(tmp_path / "VOC2012", {"train": TRAIN, "val": VAL})
    damage(root)
    with pytest.raises(UserError, match=message):
        pascal.files(root, "train")


def test_a_teacher_and_an_iteration_train_from_a_split_list_and_pseudo_labels_keep_each_frames_size(
        voc: Path, tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    split = tmp_path / "labeled.txt"
    names = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    split.write_text("\n".join(names[:4]) + "\n")
    semisup_cam.main(main_args(voc, tmp_path, dataset="pascal", split_file=split, val_size=1, no_iter=1,
                               pseudo_epochs=1, finetune_epochs=1, pseudo_root=tmp_path / "pseudo", batch_size=4))
    recorded = json.loads((tmp_path / "run" / "split.json").read_text())
    assert recorded["labeled"] == names[:4] and len(recorded["unlabeled"]) == 3 and len(recorded["val"]) == 1
    for name in recorded["unlabeled"]:
        written = Image.open(tmp_path / "pseudo" / "train_pseudoIt1" / f"{name}.png")
        assert written.size == Image.open(voc / "JPEGImages" / f"{name}.jpg").size
        assert set(np.unique(np.array(written))) <= set(range(21))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"] == "Pascal VOC 2012" and set(summary["teacher"]["per_class_iou"]) == set(pascal.NAMES)
    assert summary["iterations"][0]["pseudo_miou"] is not None  # the split protocol knows the hidden labels

    out = tmp_path / "predicted"
    predict.main(["--checkpoint", str(tmp_path / "ckpt" / "teacher_best.pth.tar"), "--images",
                  str(voc / "JPEGImages"), "--out", str(out)])
    colours = np.array(pascal.CLASSES.colours, np.uint8)
    for photo in sorted((voc / "JPEGImages").glob("*.jpg")):
        index = np.array(Image.open(out / "index" / f"{photo.stem}.png"))
        assert index.shape == Image.open(photo).size[::-1] and index.max() <= 20
        colour = np.array(Image.open(out / "colour" / f"{photo.stem}.png").convert("RGB"))
        assert np.array_equal(colour, colours[index])


@pytest.mark.parametrize("source, sizes", [
    ("unimatch", {"92": 92, "183": 183, "366": 366, "732": 732, "1464": 1464, "1_16": 662, "1_8": 1323, "1_4": 2646}),
    ("u2pl", {"92": 92, "183": 183, "366": 366, "732": 732, "1464": 1464, "662": 662, "1323": 1323, "2646": 2646,
              "5291": 5291}),
])
def test_the_published_lists_are_there_with_their_sources(source: str, sizes: dict[str, int]) -> None:
    val = set((SPLITS / "val.txt").read_text().split())
    fine = set((SPLITS / source / "1464.txt").read_text().split())
    assert len(val) == 1449 and len(fine) == 1464 and not fine & val
    for name, count in sizes.items():
        names = (SPLITS / source / f"{name}.txt").read_text().split()
        assert len(names) == len(set(names)) == count and not set(names) & val
        assert set(names) <= fine or name not in ("92", "183", "366", "732")
    sources = (SPLITS / "SOURCES.md").read_text()
    for commit in ("0324f3dd4a22128105a5eb135d2586c0bb3cc647", "ab3d2be313d4d6b2885e7a0213d4fce82a803b79"):
        assert commit in sources


def test_a_published_list_of_names_reads_as_the_labeled_images() -> None:
    names = (SPLITS / "unimatch" / "1_16.txt").read_text().split()
    read = read_split_file(SPLITS / "unimatch" / "1_16.txt", names + ["2099_000001"])
    assert read == {"labeled": names, "unlabeled": ["2099_000001"]}

"""Your own data: classes.json, images/ and labels/ with an ignore value, an optional unlabeled/ folder, and a
teacher and one iteration on a generated folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

import predict
import semisup_cam
from data import folder
from data.segmentation import IMAGENET, load_set
from data.synthetic import render_street_scene
from utils.errors import UserError
from utils.io import write_png

from conftest import TINY_SIZE

# The synthetic scenes' 11 classes and Void folded into 3 classes and the ignore value 255.
FOLD = np.array([0, 1, 1, 2, 0, 2, 0, 0, 0, 2, 0, 255], np.uint8)  # built, green/sky, ground/car, void
CLASSES = {"names": ["built", "open", "ground"], "ignore": 255, "colours": [[200, 0, 0], [0, 200, 0], [0, 0, 200]]}


def make_folder(root: Path, labeled: int, unlabeled: int, spec: Any = None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(labeled + unlabeled):
        image, scene_labels = render_street_scene(TINY_SIZE, rng)
        if i < labeled:
            write_png(root / "images" / f"photo{i:03d}.png", image)
            write_png(root / "labels" / f"photo{i:03d}.png", FOLD[scene_labels])
        else:
            (root / "unlabeled").mkdir(exist_ok=True)
            Image.fromarray(image).save(root / "unlabeled" / f"frame{i:03d}.jpg")
    (root / "classes.json").write_text(json.dumps(CLASSES if spec is None else spec))
    return root


@pytest.fixture(scope="module")
def own_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("own"), labeled=10, unlabeled=4)


# ----------------------------------------------------------------------------- the class file

def test_the_class_file_gives_names_colours_and_the_ignore_value(own_data: Path) -> None:
    table, lookup = folder.classes(own_data)
    assert table.names == ("built", "open", "ground") and table.ignore_index == 3
    assert table.colours == ((200, 0, 0), (0, 200, 0), (0, 0, 200), (0, 0, 0))
    assert table.mean == IMAGENET[0]
    assert lookup[255] == 3 and [lookup[v] for v in range(3)] == [0, 1, 2]
    assert lookup[3] == 255  # the class count is no class, and not the ignore value given: an error
    assert lookup[4] == lookup[254] == 255  # invalid: an error when a label holds it


def test_names_alone_make_a_class_file(tmp_path: Path) -> None:
    table, lookup = folder.classes(make_folder(tmp_path, 1, 0, {"names": ["a", "b"]}))
    assert len(set(table.colours)) == 3 and table.colours[-1] == (0, 0, 0)
    assert lookup[2] == 2 and lookup[255] == 255


@pytest.mark.parametrize("spec, message", [
    ({"classes": ["a"]}, '"names", a list'),
    ({"names": ["a", "a"]}, "different strings"),
    ({"names": ["a", "b"], "ignore": 1}, '"ignore" must be a label value from 2 to 255'),
    ({"names": ["a", "b"], "colours": [[0, 0, 0]]}, "one \\[r, g, b\\]"),
    ({"names": ["a"], "colours": [[0, 0, 300]]}, "one \\[r, g, b\\]"),
    ({"names": ["a"], "std": [1, 0, 1]}, '"std" above 0'),
])
def test_a_wrong_class_file_says_what_it_needs(tmp_path: Path, spec: Any, message: str) -> None:
    (tmp_path / "classes.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match=f"classes.json: .*{message}.*README, 'Cityscapes, Pascal VOC and your own "
                                        "data'"):
        folder.classes(tmp_path)


def test_a_missing_class_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="classes.json cannot be read.*images/ and labels/"):
        folder.classes(tmp_path)


# ----------------------------------------------------------------------------- labels

def test_the_ignore_value_becomes_the_ignore_index(own_data: Path) -> None:
    _, lookup = folder.classes(own_data)
    data = load_set(*folder.files(own_data, "train"), lookup, 1.0)
    raw = np.array(Image.open(own_data / "labels" / "photo004.png"))
    assert (raw == 255).any()
    assert np.array_equal(data.labels[4].numpy(), np.where(raw == 255, 3, raw))


def test_a_label_value_outside_the_classes_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path, 3, 0)
    bad = np.array(Image.open(root / "labels" / "photo001.png"))
    bad[0, 0] = 7
    write_png(root / "labels" / "photo001.png", bad)
    with pytest.raises(UserError, match=r"photo001.png holds the value 7, but its valid values are 0..2, 255"):
        load_set(*folder.files(root, "train"), folder.classes(root)[1], 1.0)


# ----------------------------------------------------------------------------- training

def test_a_generated_folder_trains_a_teacher_and_an_iteration_on_its_unlabeled_images(
        own_data: Path, tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    semisup_cam.main(main_args(own_data, tmp_path, dataset="folder", val_size=2, no_iter=1, pseudo_epochs=1,
                               finetune_epochs=1, pseudo_root=tmp_path / "pseudo", pictures=1))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] and summary["iterations"][0]["pseudo_frames"] == 4
    assert list(summary["teacher"]["per_class_iou"]) == ["built", "open", "ground"]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["labeled"]) == 6 and len(split["val"]) == 2 and split["unlabeled"] == []
    pseudo = sorted((tmp_path / "pseudo" / "train_pseudoIt1").glob("*.png"))
    assert [p.stem for p in pseudo] == ["frame010", "frame011", "frame012", "frame013"]
    assert np.array(Image.open(pseudo[0])).max() <= 3

    out = tmp_path / "predicted"
    predict.main(["--checkpoint", str(tmp_path / "ckpt" / "teacher_best.pth.tar"), "--images",
                  str(own_data / "unlabeled"), "--out", str(out), "--device", "cpu"])
    index = np.array(Image.open(out / "index" / "frame010.png"))
    colour = np.array(Image.open(out / "colour" / "frame010.png").convert("RGB"))
    assert np.array_equal(colour, np.array([c for c in CLASSES["colours"]] + [[0, 0, 0]], np.uint8)[index])


def test_the_test_images_are_the_same_for_every_seed(own_data: Path, tmp_path: Path,
                                                     main_args: Callable[..., list[str]]) -> None:
    splits = []
    for seed in (0, 1):
        work = tmp_path / str(seed)
        semisup_cam.main(main_args(own_data, work, dataset="folder", val_size=2, seed=seed))
        splits.append(json.loads((work / "run" / "split.json").read_text()))
    names = {p.stem for p in own_data.joinpath("images").glob("*.png")}
    held = [names - set(s["labeled"]) - set(s["val"]) for s in splits]
    assert held[0] == held[1] and len(held[0]) == 2
    assert splits[0]["val"] != splits[1]["val"]


def test_without_unlabeled_images_the_loop_says_where_to_put_them(tmp_path: Path,
                                                                  main_args: Callable[..., list[str]]) -> None:
    root = make_folder(tmp_path / "data", 6, 0)
    with pytest.raises(UserError, match=r"data/unlabeled does not exist.*--labeled_fraction=1/8"):
        semisup_cam.main(main_args(root, tmp_path, dataset="folder", val_size=1, no_iter=1))

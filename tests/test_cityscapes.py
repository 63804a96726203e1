"""Cityscapes: the official label table, the official file layout, its errors, the published split lists,
and a teacher and one iteration on a generated tree (trained from DATA_CACHE's memory-mapped files)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

import predict
import semisup_cam
from data import cityscapes
from data.datasets import load_subset
from data.segmentation import read_split_file
from data.synthetic import render_street_scene
from utils.errors import UserError
from utils.io import write_png

from conftest import TINY_SIZE

# cityscapesScripts' helpers/labels.py: (name, id, trainId, color); 255 and -1 are not trained on.
OFFICIAL = [
    ("unlabeled", 0, 255, (0, 0, 0)), ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)), ("out of roi", 3, 255, (0, 0, 0)), ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)), ("ground", 6, 255, (81, 0, 81)), ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)), ("parking", 9, 255, (250, 170, 160)), ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)), ("wall", 12, 3, (102, 102, 156)), ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)), ("bridge", 15, 255, (150, 100, 100)), ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)), ("polegroup", 18, 255, (153, 153, 153)), ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)), ("vegetation", 21, 8, (107, 142, 35)), ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)), ("person", 24, 11, (220, 20, 60)), ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)), ("truck", 27, 14, (0, 0, 70)), ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)), ("trailer", 30, 255, (0, 0, 110)), ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)), ("bicycle", 33, 18, (119, 11, 32)), ("license plate", -1, -1, (0, 0, 142)),
]
# The synthetic scenes' classes (data/synthetic.py: building, tree, sky, car, sign, road, pedestrian, fence, pole,
# sidewalk, bicyclist, void) as Cityscapes label ids; some become ids that are not trained on.
SCENE_TO_ID = np.array([11, 21, 23, 26, 20, 7, 24, 13, 17, 8, 33, 0], np.uint8)
NOT_TRAINED_ON = (4, 9, 14, 29)  # static, parking, guard rail, caravan
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}


def make_cityscapes(root: Path, per_city: dict[str, int], size: tuple[int, int] = TINY_SIZE, seed: int = 0) -> Path:
    """The official layout with generated scenes: label ids, the other gtFine files beside them (which hold
    nonsense, so reading one by mistake shows), and ids that map to ignore in a corner of every mask."""
    rng = np.random.default_rng(seed)
    for subset, count in per_city.items():
        for city in CITIES[subset]:
            for frame in range(count):
                stem = f"{city}_000000_{frame:06d}"
                image, scene_labels = render_street_scene(size, rng)
                label_ids = SCENE_TO_ID[scene_labels]
                label_ids[:4, :4] = rng.choice(NOT_TRAINED_ON, (4, 4))
                write_png(root / "leftImg8bit" / subset / city / f"{stem}_leftImg8bit.png", image)
                folder = root / "gtFine" / subset / city
                write_png(folder / f"{stem}_gtFine_labelIds.png", label_ids)
                write_png(folder / f"{stem}_gtFine_labelTrainIds.png", np.full_like(label_ids, 200))
                write_png(folder / f"{stem}_gtFine_instanceIds.png", np.full_like(label_ids, 250))
                write_png(folder / f"{stem}_gtFine_color.png", np.zeros((*label_ids.shape, 3), np.uint8))
                (folder / f"{stem}_gtFine_polygons.json").write_text("{}")
    return root


def expected_train_ids(label_ids: np.ndarray) -> np.ndarray:
    table = {label_id: train_id for _, label_id, train_id, _ in OFFICIAL if label_id >= 0}
    return np.vectorize(lambda i: 19 if table.get(int(i), 255) == 255 else table[int(i)])(label_ids)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cityscapes(tmp_path_factory.mktemp("cityscapes"), {"train": 5, "val": 2})


# ----------------------------------------------------------------------------- the label table

def test_label_ids_map_to_the_official_train_ids_and_everything_else_to_ignore() -> None:
    for name, label_id, train_id, _ in OFFICIAL:
        if label_id >= 0:
            assert cityscapes.LOOKUP[label_id] == (19 if train_id == 255 else train_id), name
    assert (cityscapes.LOOKUP[34:] == 19).all()
    assert cityscapes.CLASSES.ignore_index == 19


def test_class_names_and_colours_follow_the_train_ids() -> None:
    trained = sorted((train_id, name, colour) for name, _, train_id, colour in OFFICIAL if 0 <= train_id < 255)
    assert [train_id for train_id, _, _ in trained] == list(range(19))
    assert cityscapes.CLASSES.names == tuple(name for _, name, _ in trained)
    assert cityscapes.CLASSES.colours == (*(colour for _, _, colour in trained), (0, 0, 0))


# ----------------------------------------------------------------------------- the file layout

def test_load_subset_reads_label_ids_only_and_names_images_by_city_sequence_frame(tree: Path) -> None:
    train = load_subset("cityscapes", tree, "train")
    assert train.names[:2] == ["aachen_000000_000000", "aachen_000000_000001"] and len(train) == 10
    ids = np.array(Image.open(tree / "gtFine/train/bochum/bochum_000000_000003_gtFine_labelIds.png"))
    assert np.array_equal(train.labels[train.names.index("bochum_000000_000003")].numpy(), expected_train_ids(ids))
    assert (train.labels[:, :4, :4] == 19).all()  # static, parking, guard rail and caravan are ignore
    assert train.images.shape == (10, 3, TINY_SIZE[1], TINY_SIZE[0])


def test_half_scale_halves_images_and_labels(tree: Path) -> None:
    half = load_subset("cityscapes", tree, "test", scale=0.5)  # the official val
    assert half.images.shape[-2:] == (TINY_SIZE[1] // 2, TINY_SIZE[0] // 2) == half.labels.shape[-2:]
    assert set(half.source_sizes) == {TINY_SIZE}


def test_a_missing_label_is_named(tree: Path, tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path, {"val": 2})
    missing = root / "gtFine/val/frankfurt/frankfurt_000000_000001_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(UserError, match="1 of the 2 val images have no label: .*frankfurt_000000_000001_gtFine_"
                                        "labelIds.png.*official layout"):
        load_subset("cityscapes", root, "test")


@pytest.mark.parametrize("subset, official", [("train", "train"), ("test", "val")])
def test_a_missing_image_folder_explains_the_layout(tmp_path: Path, subset: str, official: str) -> None:
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match=rf"leftImg8bit/{official} (does not exist|holds no).*gtFine/\{{train,val\}}"):
        load_subset("cityscapes", tmp_path, subset)


# ----------------------------------------------------------------------------- the published splits

@pytest.mark.parametrize("source", ["unimatch", "u2pl"])
def test_the_published_lists_have_the_published_sizes(source: str) -> None:
    folder = Path(__file__).resolve().parents[1] / "data" / "splits" / "cityscapes" / source
    for split, count in (("1_16", 186), ("1_8", 372), ("1_4", 744), ("1_2", 1488)):
        lines = (folder / f"{split}.txt").read_text().splitlines()
        assert len(lines) == len(set(lines)) == count
        names = [Path(line).name for line in lines]
        all_train = names + [f"zz_{i:06d}_000000" for i in range(2975 - count)]
        read = read_split_file(folder / f"{split}.txt", all_train)
        assert read["labeled"] == names and len(read["unlabeled"]) == 2975 - count


# ----------------------------------------------------------------------------- training

def test_a_generated_tree_trains_a_teacher_and_an_iteration_from_a_split_list(
        tree: Path, tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    split = tmp_path / "labeled.txt"
    split.write_text("aachen/aachen_000000_000000\nbochum/bochum_000000_000004\naachen/aachen_000000_000002\n")
    semisup_cam.main(main_args(tree, tmp_path, dataset="cityscapes", split_file=split, val_size=2, no_iter=1,
                               pseudo_epochs=1, finetune_epochs=1, pseudo_root=tmp_path / "pseudo", pictures=1,
                               data_cache=tmp_path / "cache"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] and len(summary["iterations"]) == 1
    assert set(summary["teacher"]["per_class_iou"]) == set(cityscapes.NAMES)
    recorded = json.loads((tmp_path / "run" / "split.json").read_text())
    assert recorded["labeled"] == ["aachen_000000_000000", "bochum_000000_000004", "aachen_000000_000002"]
    assert len(recorded["val"]) == 2 and len(recorded["unlabeled"]) == 5
    assert not set(recorded["val"]) & set(recorded["unlabeled"] + recorded["labeled"])
    pseudo = np.array(Image.open(tmp_path / "pseudo" / "train_pseudoIt1" / f"{recorded['unlabeled'][0]}.png"))
    assert pseudo.shape == (TINY_SIZE[1], TINY_SIZE[0]) and pseudo.max() <= 19
    assert summary["iterations"][0]["pseudo_frames"] == 5 and summary["iterations"][0]["pseudo_miou"] is not None
    assert len(list((tmp_path / "cache").glob("*.uint8"))) == 2 * 4  # test, val, labeled and unlabeled: memory-mapped

    # Predictions of the Cityscapes model: train ids, and the Cityscapes palette.
    out = tmp_path / "predicted"
    predict.main(["--checkpoint", str(tmp_path / "ckpt" / "teacher_best.pth.tar"),
                  "--images", str(tree / "leftImg8bit" / "val" / "frankfurt"), "--out", str(out), "--device", "cpu"])
    index = np.array(Image.open(out / "index" / "frankfurt_000000_000000_leftImg8bit.png"))
    colour = np.array(Image.open(out / "colour" / "frankfurt_000000_000000_leftImg8bit.png").convert("RGB"))
    assert index.max() < 19
    assert np.array_equal(colour, np.array(cityscapes.COLOURS, np.uint8)[index])


def test_a_half_size_model_is_validated_and_tested_at_full_size_with_eval_scale(
        tree: Path, tmp_path: Path, main_args: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    evaluated = []
    evaluate = semisup_cam.evaluate
    def recording(model: Any, batches: Any, *args: Any) -> Any:
        batches = list(batches)
        evaluated.extend(images.shape[-2:] for images, _ in batches)
        return evaluate(model, batches, *args)

    monkeypatch.setattr(semisup_cam, "evaluate", recording)
    semisup_cam.main(main_args(tree, tmp_path, dataset="cityscapes", val_size=2, image_scale=0.5, eval_scale=1.0))
    assert set(evaluated) == {(TINY_SIZE[1], TINY_SIZE[0])} and len(evaluated) == 2  # validated once, tested once


def test_cityscapes_without_a_split_has_nothing_to_pseudo_label(tree: Path, tmp_path: Path,
                                                                main_args: Callable[..., list[str]]) -> None:
    with pytest.raises(UserError, match="no unlabeled frames.*--split_file=data/splits/cityscapes"):
        semisup_cam.main(main_args(tree, tmp_path, dataset="cityscapes", val_size=2, no_iter=1))


def test_the_thesis_statistics_are_camvid_only(tree: Path, tmp_path: Path,
                                               main_args: Callable[..., list[str]]) -> None:
    with pytest.raises(UserError, match="--normalization=thesis gives the thesis's CamVid statistics"):
        semisup_cam.main(main_args(tree, tmp_path, dataset="cityscapes", normalization="thesis"))
    assert not (tmp_path / "run").exists()

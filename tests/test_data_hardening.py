"""The data layer and the tools give no silent wrong result: split files reproduce a run's sets, the decoded cache
serves what the files hold, image and label formats are read for what they are, checkpoints carry what predictions
need, and a run keeps its split and its inputs; bad input ends in one line that says what to do."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

import predict
import semisup_cam
import semisup_cif
from data import cityscapes, segmentation
from data.datasets import load_subset
from data.mask_maker import main as mask_maker
from data.segmentation import index_lookup, load_set
from data.synthetic import make_cifar_like
from utils import report
from utils.checkpoint import load_checkpoint
from utils.checkpoint import main as inspect_checkpoint
from utils.errors import UserError
from utils.io import write_png

from test_folder_dataset import make_folder


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- split files

def test_a_runs_split_json_reproduces_its_labeled_unlabeled_val_and_test_sets(
        tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    data = make_folder(tmp_path / "own", labeled=14, unlabeled=0)
    semisup_cam.main(main_args(data, tmp_path / "a", dataset="folder", val_size=2, labeled_fraction=0.5))
    first = read_json(tmp_path / "a" / "run" / "split.json")
    assert set(first) == {"labeled", "unlabeled", "val", "test"} and first["unlabeled"]
    semisup_cam.main(main_args(data, tmp_path / "b", dataset="folder", val_size=2, seed=7,
                               split_file=tmp_path / "a" / "run" / "split.json"))
    assert read_json(tmp_path / "b" / "run" / "split.json") == first  # not drawn again from the unlabeled ones


@pytest.mark.parametrize("lines, message", [
    (["synth_train_0000", "synth_train_0001", "synth_train_0000"], "lists synth_train_0000 twice"),
    (["synth_train_0000", "nowhere_0001"], "1 names are not among them, e.g. \\['nowhere_0001'\\]"),
])
def test_a_split_list_with_a_name_twice_or_unknown_is_refused(scenes8: Path, tmp_path: Path, lines: list[str],
                                                             message: str, main_args: Callable[..., list[str]]) -> None:
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=message):
        semisup_cam.main(main_args(scenes8, tmp_path, split_file=tmp_path / "list.txt"))


def test_a_split_file_and_a_labeled_fraction_together_are_refused(scenes8: Path, tmp_path: Path,
                                                                  main_args: Callable[..., list[str]]) -> None:
    (tmp_path / "list.txt").write_text("synth_train_0000\n")
    with pytest.raises(UserError, match="--labeled_fraction=0.5 would be ignored"):
        semisup_cam.main(main_args(scenes8, tmp_path, split_file=tmp_path / "list.txt", labeled_fraction=0.5))


def test_a_run_in_progress_refuses_data_that_would_change_its_split(
        scenes8: Path, tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    import shutil
    data = Path(shutil.copytree(scenes8, tmp_path / "camvid"))
    args = main_args(data, tmp_path, labeled_fraction=0.5)
    semisup_cam.main(args)
    before = (tmp_path / "run" / "split.json").read_text()
    for folder in ("train", "train_labels"):  # two more train images
        for source in sorted((data / folder).glob("*.png"))[:2]:
            (data / folder / f"added_{source.name}").write_bytes(source.read_bytes())
    with pytest.raises(UserError, match=r"data changed since the run .* began: its (labeled|unlabeled) images would "
                                        r"now be .*new, e\.g\. \['added_"):
        semisup_cam.main([*args, "--no_iter=1"])
    assert (tmp_path / "run" / "split.json").read_text() == before


@pytest.mark.parametrize("how", ["every_image_labeled", "empty_unlabeled_list", "fraction_leaves_none"])
def test_a_split_without_unlabeled_images_stops_before_the_teacher_trains(
        how: str, scenes8: Path, tmp_path: Path, main_args: Callable[..., list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    names = sorted(p.stem for p in (scenes8 / "train").glob("*.png"))
    if how == "every_image_labeled":
        (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
        extra = {"split_file": tmp_path / "list.txt"}
    elif how == "empty_unlabeled_list":
        (tmp_path / "split.json").write_text(json.dumps({"labeled": names, "unlabeled": []}))
        extra = {"split_file": tmp_path / "split.json"}
    else:
        extra = {"labeled_fraction": 0.999}
    monkeypatch.setattr("utils.engine.train_one_epoch", lambda *a, **k: pytest.fail("the teacher trained"))
    with pytest.raises(UserError, match="No unlabeled images are left to learn from"):
        semisup_cam.main(main_args(scenes8, tmp_path, no_iter=1, **extra))


def test_cifar_without_unlabeled_images_stops_before_the_teacher_trains(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_cifar_like(tmp_path / "cifar", n_train=60, n_test=20)
    monkeypatch.setattr("utils.engine.train_one_epoch", lambda *a, **k: pytest.fail("the teacher trained"))
    with pytest.raises(UserError, match="No unlabeled images are left"):
        semisup_cif.main([f"--{k}={v}" for k, v in {"data_root": root, "device": "cpu", "width": 8, "val_size": 30,
                                                    "labeled_fraction": 0.5, "no_iter": 1, "run_dir": tmp_path / "r",
                                                    "save_dir": tmp_path / "c"}.items()])


def test_tta_scales_that_shrink_frames_to_nothing_stop_before_the_teacher_trains(
        scenes8: Path, tmp_path: Path, main_args: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("utils.engine.train_one_epoch", lambda *a, **k: pytest.fail("the teacher trained"))
    with pytest.raises(UserError, match="--tta_scales=0.001,1.0 shrinks the smallest unlabeled image"):
        semisup_cam.main(main_args(scenes8, tmp_path, labeled_fraction=0.5, no_iter=1, pseudo_tta=True,
                                   tta_scales="0.001,1.0"))


def test_cityscapes_images_of_one_name_in_two_cities_are_refused(tmp_path: Path) -> None:
    from test_cityscapes import make_cityscapes
    root = make_cityscapes(tmp_path, {"train": 2})
    image = next((root / "leftImg8bit" / "train").rglob("*.png"))
    twin = root / "leftImg8bit" / "train" / "zurich" / image.name
    twin.parent.mkdir()
    twin.write_bytes(image.read_bytes())
    with pytest.raises(UserError, match=f"{image.name[:-len('_leftImg8bit.png')]}.*have the same name"):
        cityscapes.files(root, "train")


# ----------------------------------------------------------------------------- the decoded cache

def test_a_damaged_cache_file_of_the_right_size_is_decoded_again(tiny_scenes: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    decoded = load_subset("camvid", tiny_scenes, "val")
    load_subset("camvid", tiny_scenes, "val", cache=tmp_path)
    for path in tmp_path.glob("*.uint8"):
        with open(path, "r+b") as f:
            f.write(bytes(path.stat().st_size // 2))  # half of it zeros, the size unchanged
    again = load_subset("camvid", tiny_scenes, "val", cache=tmp_path)
    assert torch.equal(again.images, decoded.images) and torch.equal(again.labels, decoded.labels)
    assert "is damaged (its checksum changed): it is decoded again" in capsys.readouterr().out


def test_a_file_saved_again_with_its_old_size_and_time_is_decoded_again(scenes: Path, tmp_path: Path) -> None:
    load_subset("camvid", scenes, "val", cache=tmp_path)
    label = sorted((scenes / "val_labels").glob("*.png"))[0]
    stat = label.stat()
    pixels = np.array(Image.open(label))
    changed = np.where(pixels == 0, 1, 0).astype(np.uint8)
    write_png(label, changed)
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the old modification time
    again = load_subset("camvid", scenes, "val", cache=tmp_path)
    assert torch.equal(again.labels[0], torch.from_numpy(changed))


def test_a_cache_that_cannot_be_written_is_one_line(tiny_scenes: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match=r"DATA_CACHE=.*afile cannot hold the decoded set.*writable folder"):
        load_subset("camvid", tiny_scenes, "val", cache=tmp_path / "afile")

    def disk_full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", disk_full, raising=False)
    with pytest.raises(UserError, match=r"cannot hold the decoded set \(No space left on device; it needs"):
        load_subset("camvid", tiny_scenes, "val", cache=tmp_path / "cache")


# ----------------------------------------------------------------------------- image and label files

def test_16_bit_grey_images_are_scaled_to_8_bits_not_cut(tmp_path: Path) -> None:
    ramp = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    pixels = segmentation.decode_image(tmp_path / "grey16.png", 1.0)
    expected = np.round(ramp / 257).astype(np.uint8)
    assert np.array_equal(pixels[..., 0], expected) and np.array_equal(pixels[..., 2], expected)
    assert len(np.unique(pixels)) > 200  # not 0 and 255 only


def test_jpeg_and_one_bit_labels_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "label.jpg")
    with pytest.raises(UserError, match="label.jpg is a JPEG.*save them as PNG"):
        segmentation.decode_label(tmp_path / "label.jpg", 1.0, index_lookup(3))
    Image.fromarray(np.zeros((8, 8), bool)).save(tmp_path / "bits.png")
    with pytest.raises(UserError, match="bits.png is a 1-bit .*8-bit grayscale PNG"):
        segmentation.decode_label(tmp_path / "bits.png", 1.0, index_lookup(3))


def test_a_label_value_equal_to_the_class_count_is_refused_where_another_value_is_ignore(tmp_path: Path) -> None:
    root = make_folder(tmp_path, 3, 0)  # three classes, ignore 255
    bad = np.array(Image.open(root / "labels" / "photo001.png"))
    bad[0, 0] = 3
    write_png(root / "labels" / "photo001.png", bad)
    from data import folder
    with pytest.raises(UserError, match=r"photo001.png holds the value 3, but its valid values are 0..2, 255"):
        load_set(*folder.files(root, "train"), folder.classes(root)[1], 1.0)


@pytest.mark.parametrize("spec, message", [
    ({"names": ["a", "b"], "mean": 5}, '"mean" and "std" must be three finite numbers'),
    ({"names": ["a", "b"], "std": [1, float("nan"), 1]}, '"mean" and "std" must be three finite numbers'),
    ({"names": ["a", "b"], "mean": [1, 2, float("inf")]}, '"mean" and "std" must be three finite numbers'),
    ({"names": ["a", "b"], "colours": 7}, '"colours" must be a list'),
])
def test_a_class_file_of_wrong_types_is_one_line(tmp_path: Path, spec: Any, message: str) -> None:
    from data import folder
    (tmp_path / "classes.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match=message):
        folder.classes(tmp_path)


def test_a_folder_of_only_pseudo_label_folders_is_not_a_folder_of_images(tmp_path: Path) -> None:
    from data import folder
    root = make_folder(tmp_path, 2, 0)
    (root / "unlabeled" / "train_pseudoIt1").mkdir(parents=True)
    with pytest.raises(UserError, match=r"unlabeled holds no images \(the pseudo-label folders of earlier runs"):
        folder.frames(root)


def test_the_demo_refuses_a_data_root_of_real_data(tiny_scenes: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "train").mkdir(parents=True)
    (real / "train" / "0016E5_07959.png").write_bytes(b"not ours")
    with pytest.raises(UserError, match="holds files this generator did not write"):
        semisup_cam.main(["--demo", f"--data_root={real}", f"--run_dir={tmp_path / 'run'}",
                          f"--save_dir={tmp_path / 'ckpt'}"])
    assert [p.name for p in real.rglob("*")] == ["train", "0016E5_07959.png"]


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory, main_args: Callable[..., list[str]]) -> Path:
    work = tmp_path_factory.mktemp("folder_run")
    data = make_folder(work / "own", labeled=8, unlabeled=2, spec={"names": ["built", "open", "ground"],
                                                                   "ignore": 255, "mean": [90, 100, 110]})
    semisup_cam.main(main_args(data, work, dataset="folder", val_size=2))
    return work


def test_predictions_need_only_the_checkpoint_not_the_data_folder(folder_run: Path, tmp_path: Path) -> None:
    checkpoint = folder_run / "ckpt" / "teacher_best.pth.tar"
    assert load_checkpoint(checkpoint)["classes"]["mean"] == (90, 100, 110)
    args = ["--checkpoint", str(checkpoint), "--images", str(folder_run / "own" / "unlabeled")]
    predict.main([*args, "--out", str(tmp_path / "before")])
    spec = read_json(folder_run / "own" / "classes.json")
    (folder_run / "own" / "classes.json").write_text(json.dumps({**spec, "mean": [10, 20, 30]}))
    predict.main([*args, "--out", str(tmp_path / "edited")])
    (folder_run / "own" / "classes.json").unlink()
    predict.main([*args, "--out", str(tmp_path / "moved")])
    (folder_run / "own" / "classes.json").write_text(json.dumps(spec))
    for name in ("edited", "moved"):
        for mask in (tmp_path / "before" / "index").glob("*.png"):
            assert mask.read_bytes() == (tmp_path / name / "index" / mask.name).read_bytes()


@pytest.mark.parametrize("name", ["init_checkpoint", "teacher_checkpoint"])
def test_a_run_never_overwrites_the_checkpoint_it_starts_from(name: str, folder_run: Path, tmp_path: Path,
                                                              main_args: Callable[..., list[str]]) -> None:
    save = tmp_path / "saved"
    save.mkdir()
    started = save / ("teacher_best.pth.tar" if name == "init_checkpoint" else "student_it1_best.pth.tar")
    started.write_bytes((folder_run / "ckpt" / "teacher_best.pth.tar").read_bytes())
    with pytest.raises(UserError, match=f"--{name}=.*is a file this run writes into --save_dir=.*copy it elsewhere"):
        semisup_cam.main(main_args(folder_run / "own", tmp_path, dataset="folder", val_size=2, no_iter=1,
                                   save_dir=save, **{name: started}))
    assert started.read_bytes() == (folder_run / "ckpt" / "teacher_best.pth.tar").read_bytes()


@pytest.mark.parametrize("content", [[1, 2, 3], {"state_dict": [1, 2]}])
def test_a_checkpoint_of_the_wrong_shape_is_one_line_everywhere(content: Any, tiny_scenes: Path, tmp_path: Path,
                                                               main_args: Callable[..., list[str]],
                                                               capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "odd.pth.tar"
    torch.save(content, path)
    message = r"odd\.pth\.tar( holds a list|: its 'state_dict' is a list| holds a list where a state dict)"
    for act in (lambda: semisup_cam.main(main_args(tiny_scenes, tmp_path / "a", init_checkpoint=path)),
                lambda: semisup_cam.main(main_args(tiny_scenes, tmp_path / "b", teacher_checkpoint=path)),
                lambda: predict.run(predict.parse_args(["--checkpoint", str(path), "--images", str(tmp_path),
                                                        "--out", str(tmp_path / "o")]))):
        with pytest.raises(UserError, match=message):
            act()
    try:  # the inspection tool says what the file holds
        inspect_checkpoint([str(path)])
    except SystemExit as stop:
        assert "holds a list" in str(stop.code)
    else:
        assert "state_dict: a list, not a model's tensors" in capsys.readouterr().out


# ----------------------------------------------------------------------------- predict.py

def test_predict_refuses_a_decompression_bomb_an_infinite_scale_and_an_empty_folder(
        folder_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = str(folder_run / "ckpt" / "teacher_best.pth.tar")
    images = folder_run / "own" / "unlabeled"

    def run(*extra: str, folder: Path = images) -> None:
        predict.run(predict.parse_args(["--checkpoint", checkpoint, "--images", str(folder), "--out",
                                        str(tmp_path / "out"), *extra]))

    with pytest.raises(UserError, match="--image-scale=inf: give a positive factor"):
        run("--image-scale=inf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images.*Give --images a folder"):
        run(folder=tmp_path / "empty")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # each photo is then a suspected bomb
    with pytest.raises(UserError, match="is larger than Pillow decodes without suspecting a decompression bomb"):
        run()


# ----------------------------------------------------------------------------- tools

def test_mask_maker_refuses_its_source_as_output_no_workers_and_an_unwritable_output(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "colour"
    write_png(src / "a_L.png", np.zeros((4, 4, 3), np.uint8))
    before = (src / "a_L.png").read_bytes()
    for argv, message in ([["--src", str(src), "--out", str(src)], "is --src itself"],
                          [["--src", str(src), "--out", str(tmp_path / "o"), "--workers=0"], "--workers=0"]):
        with pytest.raises(SystemExit):
            mask_maker(argv)
        assert message in capsys.readouterr().err
    assert (src / "a_L.png").read_bytes() == before and sorted(p.name for p in src.iterdir()) == ["a_L.png"]
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit, match="cannot write into .*afile"):
        mask_maker(["--src", str(src), "--out", str(tmp_path / "afile" / "index")])


def test_prepare_camvid_with_an_unwritable_output_is_one_line(tmp_path: Path) -> None:
    from data import prepare_camvid
    from test_prepare import TINY_SPLITS, blank_segnet, write_splits
    segnet = blank_segnet(tmp_path / "segnet")
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit, match="prepare_camvid: cannot write .*writable --out"):
        prepare_camvid.main(["--segnet", str(segnet), "--out", str(tmp_path / "afile" / "camvid"),
                             "--splits", str(write_splits(tmp_path / "splits", TINY_SPLITS))])


# ----------------------------------------------------------------------------- the report

@pytest.mark.parametrize("damage", [{"teacher": "fine"}, {"teacher": {}, "iterations": [{"test_miou": "high"}]}])
def test_a_report_of_a_summary_of_wrong_types_is_one_line(damage: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "summary.json").write_text(json.dumps(damage))
    (run / "metrics.jsonl").write_text('{"phase": 3, "epoch": "one"}\n{"phase": "teacher", "epoch": 1, "loss": "x"}\n')
    with pytest.raises(UserError, match="summary.json is not a summary this code writes"):
        report.write_report([run], tmp_path / "out")
    (run / "summary.json").write_text(json.dumps({"teacher": {}, "iterations": []}))
    assert report.load_run(run).metrics == []  # lines of wrong types are skipped like lines cut short


def test_a_reference_of_another_data_set_or_resolution_is_refused(tmp_path: Path) -> None:
    def make(name: str, config: dict) -> Path:
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps(config))
        (run / "summary.json").write_text(json.dumps({"teacher": {"test_miou": 40.0}, "iterations": []}))
        return run

    runs = [make("semi", {"dataset": "camvid", "image_scale": 0.5})]
    for name, config in (("other_data", {"dataset": "cityscapes", "image_scale": 0.5}),
                         ("other_scale", {"dataset": "camvid", "image_scale": 0.25})):
        with pytest.raises(UserError, match="differ in (dataset|image_scale)"):
            report.write_report(runs, tmp_path / "out", [make(name, config)])

"""Dataset preparation: colour/index conversion, the two CamVid importers, frame extraction.

Every test builds its own small data in tmp_path; the real SegNet release is checked only when
CAMVID_SEGNET_DIR points at it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import extract_frames, mask_maker, prepare_camvid
from data.camvid import COLOURS
from data.mask_maker import colour_to_index, index_to_colour
from utils.io import write_png

REPO = Path(__file__).resolve().parents[1]

# The table, written out independently of data/mask_maker.py: RGB -> thesis index.
OFFICIAL = {
    (128, 0, 0): 0, (0, 128, 64): 0, (64, 192, 0): 0, (64, 0, 64): 0, (192, 0, 128): 0,
    (128, 128, 0): 1, (192, 192, 0): 1,
    (128, 128, 128): 2,
    (64, 0, 128): 3, (64, 128, 192): 3, (192, 128, 192): 3, (192, 64, 128): 3, (128, 64, 64): 3,
    (192, 128, 128): 4, (128, 128, 64): 4, (0, 64, 64): 4,
    (128, 64, 128): 5, (128, 0, 192): 5, (192, 0, 64): 5,
    (64, 64, 0): 6, (192, 128, 64): 6, (64, 0, 192): 6, (64, 128, 64): 6,
    (64, 64, 128): 7,
    (192, 192, 128): 8, (0, 0, 64): 8,
    (0, 0, 192): 9, (64, 192, 128): 9, (128, 128, 192): 9,
    (0, 128, 192): 10, (192, 0, 192): 10,
    (0, 0, 0): 11,
}
# SegNet index -> thesis index (SegNet: Sky, Building, Column_Pole, Road, Sidewalk, Tree,
# SignSymbol, Fence, Car, Pedestrian, Bicyclist, Void).
SEGNET_TO_THESIS = [2, 0, 8, 5, 9, 1, 4, 7, 3, 6, 10, 11]


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (2, 3)) -> np.ndarray:
    return np.tile(np.array(colour, dtype=np.uint8), (*size, 1))


def random_official_mask(rng: np.random.Generator, height: int, width: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """A coloured mask of 8x8 blocks in the 32 colours, and the index mask it must give."""
    colours = np.array(list(OFFICIAL), dtype=np.uint8)
    indices = np.array(list(OFFICIAL.values()), dtype=np.uint8)
    blocks = rng.integers(0, len(colours), size=(height // 8, width // 8))
    blocks = blocks.repeat(8, axis=0).repeat(8, axis=1)
    return colours[blocks], indices[blocks]


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def write_splits(folder: Path, splits: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for subset, names in splits.items():
        (folder / f"{subset}.txt").write_text("".join(f"{name}\n" for name in names))
    return folder


TINY_SPLITS = {"train": ["0006R0_f00930.png", "0016E5_00390.png"],
               "val": ["0016E5_07959.png"], "test": ["Seq05VD_f00000.png"]}


@pytest.fixture
def official(tmp_path: Path) -> dict:
    """An official-style download: images/, labels/ with _L masks, one mask at 960x720."""
    rng = np.random.default_rng(0)
    expected = {}
    for number, name in enumerate(n for names in TINY_SPLITS.values() for n in names):
        height, width = (720, 960) if number == 0 else (48, 64)
        stem = name[:-4]
        write_png(tmp_path / "images" / name, rng.integers(0, 256, (height, width, 3), np.uint8))
        colour, index = random_official_mask(rng, height, width)
        write_png(tmp_path / "labels" / f"{stem}_L.png", colour)
        expected[name] = index
    return {"root": tmp_path, "expected": expected,
            "splits": write_splits(tmp_path / "splits", TINY_SPLITS)}


def run_official(official: dict, out: Path) -> None:
    root = official["root"]
    prepare_camvid.main(["--images", str(root / "images"), "--labels", str(root / "labels"),
                         "--out", str(out), "--splits", str(official["splits"]), "--workers", "2"])


# --- colour <-> index -------------------------------------------------------------------------

def test_the_table_has_the_32_official_colours() -> None:
    table = {rgb: mask_maker.class_index(target)
             for rgb, target in mask_maker.ORIGINAL_CLASSES.values()}
    assert len(mask_maker.ORIGINAL_CLASSES) == 32
    assert table == OFFICIAL


@pytest.mark.parametrize("colour,index", list(OFFICIAL.items()))
def test_each_official_colour_maps_to_its_class(colour: tuple, index: int) -> None:
    result, unknown = colour_to_index(solid(colour))
    assert result.dtype == np.uint8
    assert (result == index).all()
    assert unknown == 0


def test_unknown_colours_become_void_and_are_counted() -> None:
    rgb = solid((128, 64, 128), (4, 5))
    rgb[0, :3] = (1, 2, 3)
    rgb[3, 4] = (255, 255, 255)
    result, unknown = colour_to_index(rgb)
    assert unknown == 4
    assert (result[0, :3] == 11).all() and result[3, 4] == 11
    assert (result[1:3] == 5).all()


def test_eleven_only_knows_just_the_thesis_colours() -> None:
    rgb = np.stack([solid(colour, (1, 1))[0, 0] for colour in COLOURS])[None]
    result, unknown = colour_to_index(rgb, eleven_only=True)
    assert result.tolist() == [list(range(12))]
    assert unknown == 0
    bridge_and_lane = np.array([[[0, 128, 64], [128, 0, 192]]], dtype=np.uint8)
    result, unknown = colour_to_index(bridge_and_lane, eleven_only=True)
    assert result.tolist() == [[11, 11]] and unknown == 2
    assert colour_to_index(bridge_and_lane)[0].tolist() == [[0, 5]]


def test_index_to_colour_inverts_colour_to_index() -> None:
    index = np.random.default_rng(1).integers(0, 12, size=(30, 40)).astype(np.uint8)
    rgb = index_to_colour(index)
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    assert np.array_equal(colour_to_index(rgb)[0], index)
    assert index_to_colour(np.array([[255, -1]])).tolist() == [[[0, 0, 0], [0, 0, 0]]]


def test_colour_to_index_rejects_a_single_channel_mask() -> None:
    with pytest.raises(ValueError, match="uint8"):
        colour_to_index(np.zeros((4, 4), np.uint8))


# --- mask_maker command line ------------------------------------------------------------------

def test_mask_maker_converts_l_and_plain_names_and_reports_unknown_pixels(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rgb = solid((128, 128, 128), (6, 8))
    bad = rgb.copy()
    bad[0, 0] = (7, 7, 7)
    write_png(tmp_path / "colour" / "a_L.png", rgb)
    write_png(tmp_path / "colour" / "b.png", bad)
    mask_maker.main(["--src", str(tmp_path / "colour"), "--out", str(tmp_path / "index")])
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["a.png", "b.png"]
    assert (read(tmp_path / "index" / "a.png") == 2).all()
    assert read(tmp_path / "index" / "b.png")[0, 0] == 11
    out, err = capsys.readouterr()
    assert "b.png: 1 pixels of unknown colour" in err and "a_L.png" not in err
    assert out.strip() == "converted 2 masks; 1 had colours outside the palette (1 pixels mapped to Void)"


def test_mask_maker_refuses_two_files_for_one_output(tmp_path: Path) -> None:
    for name in ("x_L.png", "x.png"):
        write_png(tmp_path / "colour" / name, solid((0, 0, 0)))
    with pytest.raises(SystemExit, match="would both be written as x.png"):
        mask_maker.main(["--src", str(tmp_path / "colour"), "--out", str(tmp_path / "index")])


def test_mask_maker_names_a_file_that_is_no_image(tmp_path: Path) -> None:
    write_png(tmp_path / "colour" / "a_L.png", solid((128, 128, 128)))
    (tmp_path / "colour" / "b_L.png").write_text("not a picture")
    with pytest.raises(SystemExit, match=r"mask_maker: .*colour/b_L\.png cannot be read as an image"):
        mask_maker.main(["--src", str(tmp_path / "colour"), "--out", str(tmp_path / "index")])


def test_mask_maker_runs_as_a_script_with_several_subsets(tmp_path: Path) -> None:
    for subset, colour in (("train", (128, 0, 0)), ("val", (0, 128, 192))):
        write_png(tmp_path / subset / "f_L.png", solid(colour))
    command = [sys.executable, str(REPO / "data" / "mask_maker.py"), "--eleven-only",
               "--src", str(tmp_path / "train"), "--out", str(tmp_path / "train_labels"),
               "--src", str(tmp_path / "val"), "--out", str(tmp_path / "val_labels")]
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path)
    assert (read(tmp_path / "train_labels" / "f.png") == 0).all()
    assert (read(tmp_path / "val_labels" / "f.png") == 10).all()


# --- prepare_camvid ---------------------------------------------------------------------------

def test_shipped_splits_are_the_standard_367_101_233() -> None:
    splits = prepare_camvid.load_splits(prepare_camvid.DEFAULT_SPLITS)
    assert {subset: len(set(names)) for subset, names in splits.items()} == \
        {"train": 367, "val": 101, "test": 233}
    assert sum(len(names) for names in splits.values()) == 701
    assert len(set().union(*map(set, splits.values()))) == 701
    assert all(name.endswith(".png") and "/" not in name for names in splits.values() for name in names)


def test_split_lists_may_hold_segnet_path_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("/SegNet/CamVid/train/0001TP_006690.png /SegNet/CamVid/trainannot/0001TP_006690.png\n\n")
    assert prepare_camvid.read_split(path) == ["0001TP_006690.png"]


def test_prepare_official_download(official: dict, tmp_path: Path) -> None:
    out = tmp_path / "camvid"
    run_official(official, out)
    for subset, names in TINY_SPLITS.items():
        assert sorted(p.name for p in (out / subset).iterdir()) == sorted(names)
        assert sorted(p.name for p in (out / f"{subset}_labels").iterdir()) == sorted(names)
        for name in names:
            image = official["root"] / "images" / name
            assert (out / subset / name).read_bytes() == image.read_bytes()
            label = read(out / f"{subset}_labels" / name)
            assert label.dtype == np.uint8 and np.array_equal(label, official["expected"][name])
    assert read(out / "train_labels" / TINY_SPLITS["train"][0]).shape == (720, 960)
    run_official(official, out)  # a second run overwrites in place


def test_prepare_names_missing_labels(official: dict, tmp_path: Path) -> None:
    (official["root"] / "labels" / "0016E5_07959_L.png").unlink()
    with pytest.raises(SystemExit, match=r"missing labels.*1 \(0016E5_07959.png\)"):
        run_official(official, tmp_path / "camvid")


def test_prepare_names_extra_images(official: dict, tmp_path: Path) -> None:
    write_png(official["root"] / "images" / "stray.png", solid((1, 2, 3)))
    with pytest.raises(SystemExit, match=r"extra images.*stray.png"):
        run_official(official, tmp_path / "camvid")


def test_prepare_needs_one_source(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        prepare_camvid.main(["--images", str(tmp_path), "--segnet", str(tmp_path)])


def test_prepare_segnet_remaps_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    segnet, expected = tmp_path / "segnet", {}
    for subset, names in TINY_SPLITS.items():
        for name in names:
            label = rng.integers(0, 12, size=(36, 48)).astype(np.uint8)
            label[0, :4] = [12, 50, 254, 255]
            write_png(segnet / subset / name, rng.integers(0, 256, (36, 48, 3), np.uint8))
            write_png(segnet / f"{subset}annot" / name, label)
            expected[name] = np.array(SEGNET_TO_THESIS + [11] * 244, dtype=np.uint8)[label]
    out = tmp_path / "camvid"
    prepare_camvid.main(["--segnet", str(segnet), "--out", str(out),
                         "--splits", str(write_splits(tmp_path / "splits", TINY_SPLITS))])
    for subset, names in TINY_SPLITS.items():
        for name in names:
            assert np.array_equal(read(out / f"{subset}_labels" / name), expected[name])
            assert (out / subset / name).read_bytes() == (segnet / subset / name).read_bytes()


def blank_segnet(segnet: Path) -> Path:
    """The SegNet layout of TINY_SPLITS with black images and all-zero labels."""
    for subset, names in TINY_SPLITS.items():
        for name in names:
            write_png(segnet / subset / name, solid((0, 0, 0)))
            write_png(segnet / f"{subset}annot" / name, np.zeros((2, 3), np.uint8))
    return segnet


def test_prepare_names_a_label_that_is_no_image_and_leaves_out_as_it_was(tmp_path: Path) -> None:
    segnet = blank_segnet(tmp_path / "segnet")
    (segnet / "valannot" / "0016E5_07959.png").write_text("not a picture")
    out = tmp_path / "camvid"
    write_png(out / "train" / "kept.png", solid((1, 2, 3)))  # an earlier layout
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit, match=r"prepare_camvid: .*valannot/0016E5_07959\.png cannot be read as an image"):
        prepare_camvid.main(["--segnet", str(segnet), "--out", str(out),
                             "--splits", str(write_splits(tmp_path / "splits", TINY_SPLITS))])
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camvid", "segnet", "splits"]  # no staging left behind


def test_prepare_segnet_checks_each_subset(tmp_path: Path) -> None:
    segnet = blank_segnet(tmp_path / "segnet")
    (segnet / "valannot" / "0016E5_07959.png").rename(segnet / "testannot" / "0016E5_07959.png")
    with pytest.raises(SystemExit, match="valannot.*missing labels.*0016E5_07959.png"):
        prepare_camvid.main(["--segnet", str(segnet), "--out", str(tmp_path / "camvid"),
                             "--splits", str(write_splits(tmp_path / "splits", TINY_SPLITS))])


@pytest.mark.skipif(not os.environ.get("CAMVID_SEGNET_DIR"), reason="set CAMVID_SEGNET_DIR to the SegNet release")
def test_real_segnet_release(tmp_path: Path) -> None:
    prepare_camvid.main(["--segnet", os.environ["CAMVID_SEGNET_DIR"], "--out", str(tmp_path)])
    for subset, count in (("train", 367), ("val", 101), ("test", 233)):
        assert len(list((tmp_path / subset).glob("*.png"))) == count
        labels = sorted((tmp_path / f"{subset}_labels").glob("*.png"))
        assert len(labels) == count
        assert read(labels[0]).max() <= 11


# --- extract_frames ---------------------------------------------------------------------------

def make_video(path: Path, frames: int = 20) -> None:
    """A short mpeg4 .mp4 whose frame i is uniformly grey level 10*i."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for number in range(frames):
            picture = np.full((48, 64, 3), 10 * number, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())


def test_extract_every_fifth_frame(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_video(tmp_path / "0006R0.mp4")
    extract_frames.main([str(tmp_path / "0006R0.mp4"), "--out", str(tmp_path / "frames"), "--every", "5"])
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == [f"0006R0_f{n:05d}.png" for n in (0, 5, 10, 15)]
    frame = read(tmp_path / "frames" / "0006R0_f00010.png")
    assert frame.shape == (48, 64, 3) and abs(int(frame.mean()) - 100) <= 3
    out, err = capsys.readouterr()
    assert "warning" not in err and out.startswith("saved 4 frames")


def test_extract_stops_at_max_frames_and_warns_on_test_sequences(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_video(tmp_path / "seq05vd.mp4")
    extract_frames.main([str(tmp_path / "seq05vd.mp4"), "--out", str(tmp_path / "frames"),
                         "--every", "3", "--max-frames", "2"])
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == \
        ["seq05vd_f00000.png", "seq05vd_f00003.png"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "test-split" in warnings[0]


def test_test_sequences_are_recognised() -> None:
    assert extract_frames.leaks_test_frames("0001TP")
    assert extract_frames.leaks_test_frames("Seq05VD")
    assert not extract_frames.leaks_test_frames("0016E5")


def test_extract_without_pyav_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(SystemExit, match="pip install av"):
        extract_frames.extract(tmp_path / "0006R0.MXF", tmp_path / "frames", 30)

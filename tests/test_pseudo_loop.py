"""The pseudo-label loop: label files, threshold, TTA, resumable labeling, the split protocol,
promotion, and a two-iteration run of semisup_cam.main that a re-run skips entirely."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import semisup_cam
from data.camvid import CLASS_NAMES, CLASSES, IGNORE_INDEX, NUM_CLASSES
from data.datasets import load_frames
from data.segmentation import SegmentationSet, read_split_file, sequence_of, split_names
from data.synthetic import make_street_scenes
from utils.checkpoint import save_checkpoint
from utils.config import Config
from utils.dist import Runtime
from utils.engine import Candidate, predict_probs
from utils.errors import UserError
from utils.pseudo import MANIFEST, RELIABILITY, label_frames, pseudo_folder

from conftest import TINY_SIZE


class PixelModel(nn.Module):
    """Logits from each pixel's colour alone (a 1x1 convolution), hence flip-equivariant."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, NUM_CLASSES, 1)
        self.images_seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.images_seen += len(images)
        return self.conv(images.float() / 255)


class RampModel(PixelModel):
    """A PixelModel plus a left-to-right ramp: not flip-equivariant."""

    def ramp(self, width: int) -> torch.Tensor:
        return torch.arange(NUM_CLASSES).view(1, -1, 1, 1) * torch.linspace(0, 3, width).view(1, 1, 1, -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images) + self.ramp(images.shape[-1])


class FixedLogits(nn.Module):
    """Returns the same logits for every image, whatever the input."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(images), -1, -1, -1)


def random_frames(count: int, height: int = 12, width: int = 16, seed: int = 0) -> SegmentationSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8, generator=generator)
    return SegmentationSet(images, None, [f"frame_{i:02d}" for i in range(count)],
                           torch.tensor([[height, width]] * count), [(width, height)] * count)


def write_labels(model: nn.Module, frames: SegmentationSet, folder: Path, identity: dict[str, Any], rt: Runtime,
          **options: Any) -> list[str]:
    """label_frames on a SegmentationSet of CamVid frames."""
    return label_frames(model, frames, folder, identity, rt, IGNORE_INDEX, NUM_CLASSES, **options)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.array(image)


def png_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------- label files

def test_label_frames_writes_one_png_per_frame_at_the_size_on_disk(tiny_scenes: Path, tmp_path: Path,
                                                                    cpu: Runtime) -> None:
    frames = load_frames("camvid", tiny_scenes, scale=0.5)
    assert frames.images.shape[-2:] == (TINY_SIZE[1] // 2, TINY_SIZE[0] // 2)  # predicted at half size
    model = PixelModel()
    folder = pseudo_folder(tmp_path / "unlabeled", 1)
    write_labels(model, frames, folder, {"teacher": "a"}, cpu, batch_size=2)

    assert sorted(png_files(folder)) == sorted(f"{name}.png" for name in frames.names)
    assert set(json.loads((folder / MANIFEST).read_text())) == {"teacher", "frame_names_crc32"}
    probs = F.interpolate(predict_probs(model, frames.images, cpu), TINY_SIZE[::-1], mode="bilinear",
                          align_corners=False)
    for k, name in enumerate(frames.names):
        label = read_png(folder / f"{name}.png")
        assert label.shape == (TINY_SIZE[1], TINY_SIZE[0])
        assert label.max() <= IGNORE_INDEX
        assert (label == probs[k].argmax(0).numpy()).all()


def test_pseudo_folder_is_numbered_and_refuses_label_folders(tmp_path: Path) -> None:
    assert pseudo_folder(tmp_path / "unlabeled", 2) == tmp_path / "unlabeled" / "train_pseudoIt2"
    for root in (tmp_path / "train_labels", tmp_path / "val_labels"):
        with pytest.raises(UserError, match="_labels"):
            pseudo_folder(root, 1)


def test_pixels_below_the_threshold_become_void(tmp_path: Path, cpu: Runtime) -> None:
    height, width = 6, 8
    confidence = torch.tensor([0.3, 0.45, 0.55, 0.9]).repeat(height * width // 4).view(height, width)
    winner = torch.arange(height * width).view(height, width) % NUM_CLASSES
    # A logit `a` for the winner and 0 for the ten others gives a softmax maximum of e^a / (e^a + 10).
    strength = torch.log(10 * confidence / (1 - confidence))
    logits = torch.zeros(1, NUM_CLASSES, height, width)
    logits[0].scatter_(0, winner[None], strength[None])
    frames = random_frames(3, height, width)
    write_labels(FixedLogits(logits), frames, tmp_path, {}, cpu, batch_size=2, threshold=0.5)

    expected = torch.where(confidence < 0.5, IGNORE_INDEX, winner).numpy()
    for name in frames.names:
        assert (read_png(tmp_path / f"{name}.png") == expected).all()
    assert (expected == IGNORE_INDEX).sum() == height * width // 2  # the test covers both sides


def test_threshold_zero_keeps_every_pixel(tmp_path: Path, cpu: Runtime) -> None:
    frames = random_frames(2)
    write_labels(PixelModel(), frames, tmp_path, {}, cpu, batch_size=4, threshold=0.0)
    assert all((read_png(tmp_path / f"{name}.png") < NUM_CLASSES).all() for name in frames.names)


# ----------------------------------------------------------------------------- TTA

def test_flip_tta_of_a_flip_equivariant_model_equals_plain_prediction(cpu: Runtime) -> None:
    images = random_frames(3).images
    model = PixelModel()
    plain = predict_probs(model, images, cpu, scales=[1.0], flip=False)
    flipped = predict_probs(model, images, cpu, scales=[1.0], flip=True)
    torch.testing.assert_close(flipped, plain, atol=1e-6, rtol=0)


def test_flip_tta_mirrors_the_prediction_back(cpu: Runtime) -> None:
    images = random_frames(2).images
    model = RampModel()
    colour_logits = model.conv(images.float() / 255).detach()
    ramp = model.ramp(images.shape[-1])
    expected = ((colour_logits + ramp).softmax(1) + (colour_logits + ramp.flip(-1)).softmax(1)) / 2
    flipped = predict_probs(model, images, cpu, scales=[1.0], flip=True)
    torch.testing.assert_close(flipped, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(flipped, predict_probs(model, images, cpu), atol=1e-3)


def test_multi_scale_tta_returns_probabilities_at_the_input_size(cpu: Runtime) -> None:
    images = random_frames(2, 12, 16).images
    probs = predict_probs(PixelModel(), images, cpu, scales=[0.5, 1.0, 1.5], flip=True)
    assert probs.shape == (2, NUM_CLASSES, 12, 16)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 12, 16))


# ----------------------------------------------------------------------------- resuming labeling

def test_label_frames_writes_only_missing_files_and_the_same_ones(tmp_path: Path, cpu: Runtime) -> None:
    frames = random_frames(6)
    identity = {"teacher": "teacher_best.pth.tar", "threshold": 0.0}
    model = PixelModel()
    write_labels(model, frames, tmp_path, identity, cpu, batch_size=4)
    before = png_files(tmp_path)
    assert len(before) == 6 and model.images_seen == 6

    for name in list(before)[::2]:
        (tmp_path / name).unlink()
    Image.new("L", (2, 2)).save(tmp_path / "frame_01.png")  # an incomplete file from an earlier crash
    model.images_seen = 0
    write_labels(model, frames, tmp_path, identity, cpu, batch_size=4)
    assert model.images_seen == 4  # three deleted, one wrong size
    assert png_files(tmp_path) == before


def test_a_truncated_label_file_is_written_again(tmp_path: Path, cpu: Runtime) -> None:
    frames = random_frames(4)
    model = PixelModel()
    write_labels(model, frames, tmp_path, {}, cpu, batch_size=4)
    before = png_files(tmp_path)
    cut = tmp_path / "frame_02.png"
    cut.write_bytes(before["frame_02.png"][: len(before["frame_02.png"]) // 2])  # its header is still whole
    model.images_seen = 0
    write_labels(model, frames, tmp_path, {}, cpu, batch_size=4)
    assert model.images_seen == 1 and png_files(tmp_path) == before


def test_another_identity_clears_the_folder(tmp_path: Path, cpu: Runtime) -> None:
    frames = random_frames(4)
    write_labels(PixelModel(0), frames, tmp_path, {"teacher": "a"}, cpu, batch_size=4)
    (tmp_path / "stray.png").write_bytes(b"left over")
    other = PixelModel(1)
    write_labels(other, frames, tmp_path, {"teacher": "b"}, cpu, batch_size=4)
    assert other.images_seen == 4
    assert sorted(png_files(tmp_path)) == [f"{name}.png" for name in frames.names]
    assert json.loads((tmp_path / MANIFEST).read_text())["teacher"] == "b"
    fresh = tmp_path / "fresh"
    write_labels(PixelModel(1), frames, fresh, {"teacher": "b"}, cpu, batch_size=4)
    assert png_files(tmp_path) == png_files(fresh)


def test_other_frames_of_the_same_count_clear_the_folder_and_its_reliability(tmp_path: Path, cpu: Runtime) -> None:
    frames = random_frames(4)
    write_labels(PixelModel(0), frames, tmp_path, {"teacher": "a"}, cpu, batch_size=4, image_share=0.5)
    renamed = SegmentationSet(frames.images, None, [f"other_{name}" for name in frames.names], frames.sizes,
                              frames.source_sizes)
    model = PixelModel(0)
    kept = write_labels(model, renamed, tmp_path, {"teacher": "a"}, cpu, batch_size=4, image_share=0.5)
    assert model.images_seen == 8  # the reliability survey and the labels, both made again
    assert sorted(png_files(tmp_path)) == sorted(f"{name}.png" for name in renamed.names)
    assert len(kept) == 2 and set(kept) <= set(renamed.names)
    assert set(json.loads((tmp_path / RELIABILITY).read_text())["reliability"]) == set(renamed.names)


# ----------------------------------------------------------------------------- split protocol

NAMES = [f"0001TP_{i:06d}" for i in range(367)]


def test_split_names_follows_the_protocol() -> None:
    labeled, unlabeled = split_names(NAMES, 1 / 8, seed=0)
    assert len(labeled) == 46 and len(unlabeled) == 367 - 46
    assert not set(labeled) & set(unlabeled)
    assert sorted(labeled + unlabeled) == NAMES
    assert labeled == sorted(labeled) and unlabeled == sorted(unlabeled)
    assert split_names(NAMES, 1 / 8, seed=0) == (labeled, unlabeled)
    assert split_names(NAMES, 1 / 8, seed=1)[0] != labeled


@pytest.mark.parametrize("fraction, count", [(1 / 2, 184), (1 / 4, 92), (1.0, 367), (0.001, 1)])
def test_split_names_count_is_the_rounded_fraction(fraction: float, count: int) -> None:
    assert len(split_names(NAMES, fraction, seed=3)[0]) == count


CAMVID_SEQUENCES = {"0001TP": 62, "0006R0": 101, "0016E5": 204}  # CamVid's train split
CAMVID_NAMES = [f"{seq}_{i:05d}.png" for seq, size in CAMVID_SEQUENCES.items() for i in range(size)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_by_sequence_gives_every_sequence_its_share(seed: int) -> None:
    labeled, unlabeled = split_names(CAMVID_NAMES, 1 / 16, seed, by_sequence=True)
    taken = {seq: sum(name.startswith(seq) for name in labeled) for seq in CAMVID_SEQUENCES}
    # 23 seats: exact shares 3.89, 6.33, 12.78; the two largest remainders get the leftover seats
    assert taken == {"0001TP": 4, "0006R0": 6, "0016E5": 13}
    assert sorted(labeled + unlabeled) == sorted(CAMVID_NAMES) and not set(labeled) & set(unlabeled)
    assert labeled == sorted(labeled) and unlabeled == sorted(unlabeled)
    assert split_names(CAMVID_NAMES, 1 / 16, seed, by_sequence=True) == (labeled, unlabeled)
    assert split_names(CAMVID_NAMES, 1 / 16, seed + 10, by_sequence=True)[0] != labeled


@pytest.mark.parametrize("fraction", [1 / 2, 1 / 8, 1 / 16, 0.01, 3 / 367])
def test_split_by_sequence_quotas_stay_within_one_of_the_exact_share(fraction: float) -> None:
    for seed in range(20):
        labeled, _ = split_names(CAMVID_NAMES, fraction, seed, by_sequence=True)
        assert len(labeled) == max(1, round(fraction * len(CAMVID_NAMES)))
        for seq, size in CAMVID_SEQUENCES.items():
            exact = len(labeled) * size / len(CAMVID_NAMES)
            assert math.floor(exact) <= sum(name.startswith(seq) for name in labeled) <= math.ceil(exact)


def test_split_by_sequence_breaks_ties_by_seed() -> None:
    names = [f"{seq}_{i}.png" for seq in ("a", "b", "c") for i in range(10)]  # 1 seat, equal remainders
    winners = {sequence_of(split_names(names, 1 / 30, seed, by_sequence=True)[0][0]) for seed in range(30)}
    assert winners == {"a", "b", "c"}


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_split_names_refuses_fractions_outside_zero_one(fraction: float) -> None:
    with pytest.raises(UserError, match="LABELED_FRACTION"):
        split_names(NAMES, fraction, seed=0)


def test_read_split_file_round_trips(tmp_path: Path) -> None:
    labeled, unlabeled = split_names(NAMES, 1 / 8, seed=0)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"labeled": labeled, "unlabeled": unlabeled}))
    assert read_split_file(path, NAMES) == {"labeled": labeled, "unlabeled": unlabeled}


@pytest.mark.parametrize("content, message", [
    (None, "cannot be read"),
    ("{not json", "cannot be read"),
    (json.dumps({"labeled": ["0001TP_000000"]}), "cannot be read"),
    (json.dumps(["0001TP_000000"]), "cannot be read"),
    (json.dumps({"labeled": ["0001TP_000000"], "unlabeled": ["Seq05VD_f00000"]}), "names are not among them"),
    (json.dumps({"labeled": ["0001TP_000000"], "unlabeled": ["0001TP_000000"]}), "as labeled and as unlabeled"),
])
def test_read_split_file_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "split.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        read_split_file(path, NAMES)
    assert "SPLIT_FILE" in str(error.value)


def test_a_split_file_without_labeled_images_is_a_user_error(tiny_scenes: Path, tmp_path: Path,
                                                             main_args: Callable[..., list[str]]) -> None:
    names = sorted(p.stem for p in (tiny_scenes / "train").iterdir())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"labeled": [], "unlabeled": names}))
    with pytest.raises(UserError, match="SPLIT_FILE"):
        semisup_cam.main(main_args(tiny_scenes, tmp_path, split_file=split, no_iter=1))


# ----------------------------------------------------------------------------- promotion, student init

@pytest.mark.parametrize("always", [False, True])
def test_a_worse_student_teaches_the_next_iteration_only_with_promote_always(
        scenes8: Path, tmp_path: Path, main_args: Callable[..., list[str]], always: bool) -> None:
    # Students that cannot learn (a rate of 0) test as their random initialisation, below the teacher.
    semisup_cam.main(main_args(scenes8, tmp_path, labeled_fraction="1/2", teacher_epochs=4, no_iter=2,
                               pseudo_epochs=1, finetune_epochs=1, pseudo_lr=0, finetune_lr=0, promote_always=always,
                               pseudo_root=tmp_path / "pseudo"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    first, second = summary["iterations"]
    assert first["val_miou"] < summary["teacher"]["val_miou"]
    assert first["promoted"] is always and second["promoted"] is always
    assert second["teacher"] == ("student_it1" if always else "teacher")
    assert summary["current_teacher"].endswith("student_it2_best.pth.tar" if always else "teacher_best.pth.tar")


def test_a_fresh_student_is_seeded_per_iteration_and_a_teacher_student_has_the_teachers_weights(
        tmp_path: Path, cpu: Runtime) -> None:
    cfg = Config(seed=0, normalization="dataset", pretrained=False, pretrained_path="", init_checkpoint="",
                 sync_bn=False)
    fresh, again, other = (semisup_cam.fresh_model(CLASSES, cfg, cpu, salt) for salt in (1, 1, 2))
    assert torch.equal(fresh.conv1.weight, again.conv1.weight)  # a resumed run builds the same student
    assert not torch.equal(fresh.conv1.weight, other.conv1.weight)
    save_checkpoint(tmp_path / "teacher_best.pth.tar", state_dict=other.state_dict())
    teacher = Candidate("teacher", tmp_path / "teacher_best.pth.tar", 50.0, of_this_run=False)
    student = semisup_cam.trained_model(teacher, CLASSES, cfg, cpu, run=None)
    assert all(torch.equal(tensor, other.state_dict()[name]) for name, tensor in student.state_dict().items())


def test_an_unknown_student_init_is_refused(tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    with pytest.raises(UserError, match="--student_init=warm: expected 'fresh' or 'teacher'"):
        semisup_cam.main(main_args(tmp_path / "absent", tmp_path, student_init="warm"))


# ----------------------------------------------------------------------------- the loop end to end

PHASES = ["teacher", "it1_pseudo", "it1_finetune", "it2_pseudo", "it2_finetune"]


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory: pytest.TempPathFactory, main_args: Callable[..., list[str]]) -> dict[str, Any]:
    """Two iterations in the split protocol, run twice with the same command."""
    work = tmp_path_factory.mktemp("loop_run")
    data = make_street_scenes(work / "camvid", counts={"train": 8, "val": 2, "test": 2}, unlabeled=0, size=TINY_SIZE)
    argv = main_args(data, work, labeled_fraction="1/2", no_iter=2, pseudo_epochs=1, finetune_epochs=1,
                     pseudo_root=work / "pseudo")
    data_before = tree_digest(data)
    semisup_cam.main(argv)
    run = work / "run"
    first = {"summary": (run / "summary.json").read_text(), "metrics": (run / "metrics.jsonl").read_text(),
             "ckpt": mtimes(work / "ckpt"), "run_files": mtimes(run),
             "pseudo": {i: mtimes(work / "pseudo" / f"train_pseudoIt{i}") for i in (1, 2)}}
    with pytest.MonkeyPatch.context() as patch:
        def no_training(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("the re-run trained again")

        def no_labeling(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("the re-run pseudo-labeled again")

        patch.setattr("utils.engine.train_one_epoch", no_training)
        patch.setattr("semisup_cam.label_frames", no_labeling)
        semisup_cam.main(argv)
    return {"work": work, "data": data, "data_before": data_before, "first": first,
            "summary": json.loads((run / "summary.json").read_text()),
            "progress": json.loads((run / "progress.json").read_text())["phases"],
            "split": json.loads((run / "split.json").read_text())}


def test_the_loop_records_two_iterations(loop_run: dict[str, Any]) -> None:
    summary = loop_run["summary"]
    assert summary["finished"] is True
    assert [e["iteration"] for e in summary["iterations"]] == [1, 2]
    for entry in summary["iterations"]:
        assert {"iteration", "val_miou", "test_miou", "per_class_iou", "promoted", "pseudo_pixel_acc",
                "pseudo_miou", "pseudo_ignored_frac"} <= set(entry)
        assert list(entry["per_class_iou"]) == list(CLASS_NAMES)
        assert isinstance(entry["promoted"], bool)
        # Ground truth exists for the unlabeled half in the split protocol, so quality is measured.
        assert isinstance(entry["pseudo_pixel_acc"], float) and 0 <= entry["pseudo_pixel_acc"] <= 100
        assert isinstance(entry["pseudo_miou"], float)
        assert entry["pseudo_ignored_frac"] == 0.0  # PSEUDO_THRESHOLD = 0 keeps every pixel
        assert math.isfinite(entry["val_miou"]) and math.isfinite(entry["test_miou"])
    phases = {"teacher", "it1_pseudo_label", "it1_student", "it2_pseudo_label", "it2_student"}
    assert phases <= set(summary["timings_s"])


def test_the_split_is_saved_with_the_run(loop_run: dict[str, Any]) -> None:
    split = loop_run["split"]
    train_names = sorted(p.stem for p in (loop_run["data"] / "train").iterdir())
    assert len(split["labeled"]) == 4 and len(split["unlabeled"]) == 4
    assert sorted(split["labeled"] + split["unlabeled"]) == train_names
    assert split["labeled"] == split_names(train_names, 1 / 2, seed=0)[0]


def test_pseudo_labels_go_to_the_pseudo_root_only(loop_run: dict[str, Any]) -> None:
    width, height = TINY_SIZE
    for iteration in (1, 2):
        folder = loop_run["work"] / "pseudo" / f"train_pseudoIt{iteration}"
        assert sorted(png_files(folder)) == sorted(f"{name}.png" for name in loop_run["split"]["unlabeled"])
        for name in png_files(folder):
            label = read_png(folder / name)
            assert label.shape == (height, width) and label.max() <= IGNORE_INDEX
    # Ground truth and images are untouched, and nothing was added next to them.
    assert tree_digest(loop_run["data"]) == loop_run["data_before"]


def test_checkpoints_of_every_model(loop_run: dict[str, Any]) -> None:
    names = {p.name for p in (loop_run["work"] / "ckpt").iterdir() if not p.name.startswith(".")}  # .lock
    assert names == {"teacher_best.pth.tar", "student_it1_best.pth.tar", "student_it2_best.pth.tar"}
    student = torch.load(loop_run["work"] / "ckpt" / "student_it2_best.pth.tar", weights_only=True)
    assert student["iteration"] == 2
    assert student["val_iou"] == pytest.approx(loop_run["summary"]["iterations"][1]["val_miou"])


def test_a_rerun_of_the_same_command_does_nothing_again(loop_run: dict[str, Any]) -> None:
    run = loop_run["work"] / "run"
    first = loop_run["first"]
    assert list(loop_run["progress"]) == PHASES
    assert (run / "summary.json").read_text() == first["summary"]
    assert (run / "metrics.jsonl").read_text() == first["metrics"]
    assert mtimes(loop_run["work"] / "ckpt") == first["ckpt"]
    for phase in PHASES:
        assert (run / f"last_{phase}.pth.tar").stat().st_mtime_ns == first["run_files"][f"last_{phase}.pth.tar"]
    for iteration in (1, 2):
        assert mtimes(loop_run["work"] / "pseudo" / f"train_pseudoIt{iteration}") == first["pseudo"][iteration]

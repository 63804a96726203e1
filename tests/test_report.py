"""Looking at results: the run report, prediction and pseudo-label pictures, predict, checkpoint inspection."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
from data.camvid import CLASS_NAMES, COLOURS, IGNORE_INDEX, LEGEND, STATISTICS
from data.mask_maker import index_to_colour
from models.swiftnet import swiftnet_rn18
from utils import report
from utils.checkpoint import parameter_count, save_checkpoint
from utils.dist import Runtime
from utils.pictures import GAP, HEADER, LEGEND_ROW, prediction_pictures, pseudo_label_pictures

REPO = Path(__file__).resolve().parents[1]
PLOTS = ("curves.png", "per_class_iou.png")


def per_class(offset: float) -> dict[str, float | None]:
    """Distinct IoUs per class (offset + 10 * index), Bicyclist never seen (None)."""
    ious: dict[str, float | None] = {name: offset + 10 * i for i, name in enumerate(CLASS_NAMES)}
    ious["Bicyclist"] = None
    return ious


def make_run(folder: Path, final_test_miou: float = 17.25) -> Path:
    """A CamVid run directory as a resumed run leaves it: teacher, 2 iterations, a repeated epoch."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"image_scale": 0.5, "crop_size": 448, "run_dir": ""}))
    lines = [
        {"phase": "teacher", "iteration": 0, "epoch": 1, "loss": 2.0, "lr": 1e-3, "seconds": 1, "score": 5.0,
         "val_miou": 5.0},
        {"phase": "teacher", "iteration": 0, "epoch": 2, "loss": 9.9, "lr": 1e-3, "seconds": 2, "score": 1.0,
         "val_miou": 1.0},  # interrupted and re-run after the resume: the next line replaces it
        {"phase": "teacher", "iteration": 0, "epoch": 2, "loss": 1.5, "lr": 1e-4, "seconds": 2, "score": 12.0,
         "val_miou": 12.0},
        {"phase": "it1_pseudo", "iteration": 1, "epoch": 1, "loss": 1.2, "lr": 1e-3, "seconds": 1, "score": 15.0},
        {"phase": "it1_finetune", "iteration": 1, "epoch": 1, "loss": 1.0, "lr": 1e-3, "seconds": 1, "score": 20.5},
        {"phase": "it2_pseudo", "iteration": 2, "epoch": 1, "loss": 1.1, "lr": 1e-3, "seconds": 1, "score": 18.0},
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = {
        "teacher": {"val_miou": 12.0, "best_epoch": 2, "test_miou": 11.5, "test_pixel_acc": 70.25,
                    "per_class_iou": per_class(1.0)},
        "iterations": [
            {"iteration": 1, "val_miou": 20.5, "test_miou": 19.75, "test_pixel_acc": 80.5,
             "per_class_iou": per_class(2.0), "promoted": True, "teacher": "teacher", "pseudo_pixel_acc": 81.5,
             "pseudo_miou": 33.25, "pseudo_ignored_frac": 4.5},
            {"iteration": 2, "val_miou": 18.0, "test_miou": final_test_miou, "test_pixel_acc": 79.0,
             "per_class_iou": per_class(3.0), "promoted": False, "teacher": "student_it1",
             "pseudo_pixel_acc": None, "pseudo_miou": None, "pseudo_ignored_frac": 6.0},
        ],
        "timings_s": {"teacher": 3.0}, "finished": True, "current_teacher": "saved/student_it1_best.pth.tar",
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def table(text: str, first_header: str, occurrence: int = 0) -> dict[str, dict[str, str]]:
    """The Markdown table whose header starts with `first_header`, as {row name: {column: cell}}."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |")]
    start = starts[occurrence]
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


# ----------------------------------------------------------------------------- report

def test_metrics_keep_the_last_line_of_a_repeated_epoch_and_skip_a_damaged_one(tmp_path: Path) -> None:
    path = make_run(tmp_path / "run") / "metrics.jsonl"
    with path.open("a") as f:
        f.write('{"phase": "it2_pseudo", "epoch": 2, "lo')  # cut short by a full disk
    metrics = report.read_metrics(path)
    teacher = [(e["epoch"], e["score"]) for e in metrics if e["phase"] == "teacher"]
    assert teacher == [(1, 5.0), (2, 12.0)]
    assert [e["phase"] for e in metrics][-3:] == ["it1_pseudo", "it1_finetune", "it2_pseudo"]


def test_report_of_one_run_has_its_tables_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "20240101_cam")
    report.main([str(run)])
    text = (run / "report.md").read_text()
    assert "report.md" in capsys.readouterr().out

    iterations = table(text, "model")
    assert iterations["teacher"]["val mIoU"] == "12.00" and iterations["teacher"]["test mIoU"] == "11.50"
    assert iterations["teacher"]["test pixel acc"] == "70.25" and iterations["teacher"]["promoted"] == "–"
    first = iterations["iteration 1"]
    assert (first["val mIoU"], first["test mIoU"], first["pseudo pixel acc"], first["pseudo mIoU"],
            first["pseudo ignored %"], first["promoted"]) == ("20.50", "19.75", "81.50", "33.25", "4.50", "yes")
    second = iterations["iteration 2"]
    assert second["taught by"] == "student_it1" and second["promoted"] == "no"
    assert second["pseudo mIoU"] == "–" and second["pseudo ignored %"] == "6.00"

    classes = table(text, "class")
    assert list(classes["Road"]) == ["teacher", "iteration 2 (final)"]
    assert classes["Road"] == {"teacher": "51.00", "iteration 2 (final)": "53.00"}  # Road is class 5
    assert classes["Building"]["iteration 2 (final)"] == "3.00" and classes["Bicyclist"]["teacher"] == "–"
    assert classes["**mIoU**"]["iteration 2 (final)"] == "17.25"

    for name in PLOTS:
        assert f"]({name})" in text
        with Image.open(run / name) as picture:
            assert picture.format == "PNG" and picture.width > 200
    assert "pip install matplotlib" not in text


def test_without_matplotlib_the_tables_remain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run = make_run(tmp_path / "run")
    path = report.write_report([run], run)
    text = path.read_text()
    assert "pip install matplotlib" in text
    assert table(text, "model")["iteration 1"]["test mIoU"] == "19.75"
    assert table(text, "class")["Road"]["teacher"] == "51.00"
    assert not any((run / name).exists() for name in PLOTS)


def test_two_runs_give_one_column_per_run(tmp_path: Path) -> None:
    first = make_run(tmp_path / "a" / "run_a", final_test_miou=17.25)
    second = make_run(tmp_path / "b" / "run_b", final_test_miou=27.5)
    report.main([str(first), str(second), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    classes = table(text, "class")
    assert list(classes["Sky"]) == ["run_a", "run_b"]
    assert classes["**mIoU**"] == {"run_a": "17.25", "run_b": "27.50"}
    assert "## run_a" in text and "## run_b" in text
    assert (tmp_path / "out" / "curves.png").is_file()


def test_an_online_student_gets_a_table_of_its_loss_terms_per_epoch(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    online = [{"phase": "it1_unimatch", "iteration": 1, "epoch": epoch, "step": 10 * epoch, "loss": 1.0 / epoch,
               "loss_labeled": 0.5, "loss_strong": 0.25 * epoch, "loss_perturbed": 0.125, "above_threshold": 40.0
               + epoch, "lr": 1e-3, "seconds": epoch, **({"score": 30.0} if epoch == 2 else {})} for epoch in (1, 2)]
    with open(run / "metrics.jsonl", "a") as f:
        f.write("".join(json.dumps(line) + "\n" for line in online))
    text = report.write_report([run], tmp_path / "out").read_text()
    section = text[text.index("## Online students"):]
    assert "| epoch | loss | labeled loss | strong-view loss | perturbed-feature loss | unlabeled above threshold " \
           "(%) | val mIoU |" in section
    assert "| 1 | 1.00 | 0.50 | 0.25 | 0.12 | 41.00 | – |" in section
    assert "| 2 | 0.50 | 0.50 | 0.50 | 0.12 | 42.00 | 30.00 |" in section
    assert "it1_pseudo" not in section  # offline phases log no terms
    assert "## Online students" not in report.write_report([make_run(tmp_path / "offline")],
                                                           tmp_path / "out2").read_text()


def test_several_runs_need_out_and_a_missing_run_is_explained(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    with pytest.raises(SystemExit, match="^error: .*--out DIR"):
        report.main([str(run), str(run)])
    with pytest.raises(SystemExit, match="^error: .*not a run directory"):
        report.main([str(tmp_path / "nothing")])


def test_cifar_runs_are_recognised_by_their_keys(tmp_path: Path) -> None:
    run = tmp_path / "cif"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({
        "teacher": {"val_acc": 40.0, "best_epoch": 3, "test_acc": 39.5},
        "iterations": [{"iteration": 1, "val_acc": 45.0, "test_acc": 44.25, "pseudo_acc": 61.5,
                        "pseudo_all_acc": 40.0, "pseudo_kept_frac": 55.0, "promoted": True, "teacher": "teacher"}]}))
    text = report.write_report([run], run).read_text()
    rows = table(text, "model")
    assert rows["iteration 1"]["test accuracy"] == "44.25" and rows["iteration 1"]["pseudo kept %"] == "55.00"
    assert "Per-class" not in text and not (run / "per_class_iou.png").exists()


def make_scored_run(folder: Path, seed: int, teacher: float, students: list[tuple[float, bool]],
                    score: str = "miou") -> Path:
    """A finished run of SEED: its teacher's test score and each iteration's (test score, promoted)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"seed": seed}))
    iterations = [{"iteration": i, f"val_{score}": 50.0, f"test_{score}": test, "promoted": promoted}
                  for i, (test, promoted) in enumerate(students, 1)]
    (folder / "summary.json").write_text(json.dumps(
        {"teacher": {f"val_{score}": 50.0, f"test_{score}": teacher}, "iterations": iterations, "finished": True}))
    return folder


def test_the_gap_is_counted_against_the_same_seed_or_the_references_mean(tmp_path: Path) -> None:
    full = [make_scored_run(tmp_path / f"full_s{s}", s, test, []) for s, test in ((0, 44.0), (1, 42.0))]
    runs = [make_scored_run(tmp_path / "semi_s0", 0, 38.0, [(41.0, True), (40.0, False)]),  # 3 of a 6-point gap
            make_scored_run(tmp_path / "semi_s1", 1, 40.0, [(39.5, False)]),  # loses; the loop keeps the teacher
            make_scored_run(tmp_path / "semi_s4", 4, 40.0, [(41.5, True)]),  # no reference of seed 4: mean 43
            make_scored_run(tmp_path / "semi_s5", 5, 40.0, [])]  # not that far yet
    report.main([*map(str, runs), "--out", str(tmp_path / "out"), "--reference", *map(str, full)])
    text = (tmp_path / "out" / "report.md").read_text()

    rows = table(text, "run")
    assert rows["semi_s0"] == {"seed": "0", "full labels": "44.00", "teacher": "38.00", "student": "41.00",
                               "gap closed": "+50%", "end model": "41.00 (iteration 1)", "gap closed (end)": "+50%"}
    assert rows["semi_s1"]["gap closed"] == "-25%" and rows["semi_s1"]["end model"] == "40.00 (teacher)"
    assert rows["semi_s1"]["gap closed (end)"] == "+0%"
    assert rows["semi_s4"]["full labels"] == "43.00" and rows["semi_s4"]["gap closed"] == "+50%"
    # On the means: full 43, teacher 39.33, student 40.67, end 40.83, so 1.33 and 1.50 of a 3.67-point gap.
    assert rows["**mean**"] == {"seed": "–", "full labels": "43.00", "teacher": "39.33", "student": "40.67",
                                "gap closed": "+36%", "end model": "40.83", "gap closed (end)": "+41%"}
    assert "semi_s5" not in rows and "not tested yet: semi_s5" in text
    # Gains 3, -0.5 and 1.5: standard deviation 1.76, standard error 1.01.
    assert "gain +1.33 over their teachers; half the gap is 1.83" in text
    assert "spread by 1.76 between runs" in text and "±1.01 (standard error)" in text
    assert text.index("## The gap to full supervision") < text.index("## semi_s0")


def test_a_teacher_level_with_full_supervision_has_no_share_of_a_gap(tmp_path: Path) -> None:
    full = make_scored_run(tmp_path / "full", 0, 90.0, [], score="acc")
    run = make_scored_run(tmp_path / "semi", 0, 91.0, [(92.0, True)], score="acc")
    text = report.write_report([run], tmp_path / "out", [full]).read_text()
    row = table(text, "run")["semi"]
    assert row["gap closed"] == "–" and row["student"] == "92.00"
    assert "Test accuracy" in text and "spread by" not in text
    assert "gain +1.00 over their teachers; the teachers test level with full supervision or above it" in text


def test_unusable_references_are_explained(tmp_path: Path) -> None:
    run = make_scored_run(tmp_path / "semi", 0, 38.0, [(41.0, True)])
    twins = [make_scored_run(tmp_path / f"full_{i}", 0, 44.0, []) for i in range(2)]
    with pytest.raises(SystemExit, match="^error: Two reference runs have seed 0"):
        report.main([str(run), "--reference", *map(str, twins)])
    untested = tmp_path / "untested"
    untested.mkdir()
    (untested / "config.json").write_text(json.dumps({"seed": 0}))
    with pytest.raises(SystemExit, match="^error: .*untested has no tested model"):
        report.main([str(run), "--reference", str(untested)])
    cifar = make_scored_run(tmp_path / "cifar_full", 0, 90.0, [], score="acc")
    with pytest.raises(SystemExit, match="^error: .*different tasks"):
        report.main([str(run), "--reference", str(cifar)])


# ----------------------------------------------------------------------------- pictures

@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return swiftnet_rn18(len(CLASS_NAMES), *STATISTICS["camvid"])


def panel(picture: np.ndarray, k: int, height: int = 48, width: int = 64) -> np.ndarray:
    """The k-th panel of a picture sheet: panels sit side by side under their titles."""
    return picture[HEADER : HEADER + height, k * (width + GAP) : k * (width + GAP) + width]


def test_prediction_pictures_show_four_titled_panels_and_the_class_colours(model: torch.nn.Module,
                                                                           tmp_path: Path) -> None:
    images = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    labels = torch.randint(0, len(CLASS_NAMES), (2, 48, 64), dtype=torch.uint8)
    labels[:, :8] = IGNORE_INDEX
    model.train()
    paths = prediction_pictures(model, images, labels, ["a", "b"], tmp_path / "pictures", Runtime(torch.device("cpu")),
                                LEGEND)
    assert [p.name for p in paths] == ["a.png", "b.png"] and model.training
    picture = np.asarray(Image.open(paths[0]))
    assert picture.shape[1] == 4 * 64 + 3 * GAP and picture.shape[0] > HEADER + 48 + LEGEND_ROW
    assert np.array_equal(panel(picture, 0), images[0].permute(1, 2, 0).numpy())
    assert np.array_equal(panel(picture, 1), index_to_colour(labels[0].numpy()))
    errors = panel(picture, 3)
    assert (errors[:8] == 128).all()  # Void is grey
    assert set(map(tuple, errors[8:].reshape(-1, 3))) <= {(0, 0, 0), (255, 0, 0)}
    legend = picture[HEADER + 48 :].reshape(-1, 3)
    assert all((legend == colour).all(1).any() for colour in COLOURS)  # a box of every class's colour
    assert (picture[:HEADER] < 128).any()  # the titles


def test_pseudo_label_pictures_show_three_panels(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    labels = torch.full((2, 48, 64), 2, dtype=torch.uint8)
    confidence = torch.linspace(0, 1, 64).expand(2, 48, 64)
    with_confidence = pseudo_label_pictures(images, labels, confidence, ["a", "b"], tmp_path / "with", LEGEND)
    without = pseudo_label_pictures(images, labels, None, ["a", "b"], tmp_path / "without", LEGEND)
    picture = np.asarray(Image.open(with_confidence[1]))
    assert picture.shape[1] == 3 * 64 + 2 * GAP
    assert (panel(picture, 1) == COLOURS[2]).all()
    assert panel(picture, 2)[0, 0].tolist() == [0, 0, 0] and panel(picture, 2)[0, -1].tolist() == [255, 255, 255]
    assert (panel(np.asarray(Image.open(without[0])), 2) == 0).all()


# ----------------------------------------------------------------------------- predict and inspect

@pytest.fixture(scope="module")
def checkpoint(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pth.tar"
    save_checkpoint(path, epoch=3, phase="teacher", val_iou=12.5, state_dict=model.state_dict(),
                    config={"image_scale": 0.5, "crop_size": 448})
    return path


def test_predict_writes_index_and_colour_masks_at_the_image_size(checkpoint: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"f1": (96, 64), "f2": (96, 64), "f3": (80, 72)}
    for name, (width, height) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(images / f"{name}.png")
    out = tmp_path / "out"
    predict.main(["--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out), "--device", "cpu",
                  "--batch-size", "2"])
    assert "Predicted 3 images at scale 0.5" in capsys.readouterr().out  # the checkpoint's IMAGE_SCALE
    for name, size in sizes.items():
        index = Image.open(out / "index" / f"{name}.png")
        colour = Image.open(out / "colour" / f"{name}.png")
        assert index.size == colour.size == size and index.mode == "L" and colour.mode == "RGB"
        assert np.asarray(index).max() < len(CLASS_NAMES)
        assert np.array_equal(np.asarray(colour), index_to_colour(np.asarray(index)))


def test_predict_reports_a_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="^error: Checkpoint .* does not exist"):
        predict.main(["--checkpoint", str(tmp_path / "none.pth.tar"), "--images", str(tmp_path),
                      "--out", str(tmp_path / "out")])


def test_checkpoint_inspection_prints_epoch_parameters_and_config(checkpoint: Path,
                                                                 model: torch.nn.Module) -> None:
    result = subprocess.run([sys.executable, "-m", "utils.checkpoint", str(checkpoint)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "epoch: 3" in result.stdout
    assert f"parameters: {parameter_count(model.state_dict()):,}" in result.stdout
    assert "image_scale = 0.5" in result.stdout

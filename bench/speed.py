"""Throughput of the project's data path, training, evaluation and pseudo-labeling, each measured
in the same run against a baseline built the way the thesis code worked, and our path in fp32 and
in bf16 side by side.

    python bench/speed.py [--quick] [--json PATH] [--device auto] [--crop 448] [--size 960x720]
                          [--precisions fp32,bf16]

Baselines: a per-sample PIL pipeline (decode the PNG, random scale, crop, flip, to tensor) that
feeds the same model in fp32, evaluation one image at a time outside inference mode, pseudo-labels
saved one by one, and the per-pixel Python loops that filled the thesis's confusion matrix and
converted its colour masks. Our path: uint8 tensors in memory (on the GPU when there is one),
batched augmentation on the device, batched inference and a bincount confusion matrix; in bf16,
autocast and channels-last (what PRECISION="auto" picks where the device has bf16 arithmetic).
Every figure is a median over timed repetitions after warm-up, with the device synchronised before
the clock is read.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")  # the table is the output; progress bars would bury it

from bench.mask_maker_speed import python_loop, synthetic_masks, time_lut  # noqa: E402
from data.camvid import IGNORE_INDEX, LOOKUP, NUM_CLASSES, STATISTICS  # noqa: E402
from data.segmentation import load_images, load_labels  # noqa: E402
from data.synthetic import render_street_scene  # noqa: E402
from data.transforms import scale_crop_flip  # noqa: E402
from models.swiftnet import swiftnet_rn18  # noqa: E402
from utils.dist import Runtime, cpu_has_native_bf16, resolve_device, resolve_precision  # noqa: E402
from utils.engine import cross_entropy, evaluate, predict_probs, slices  # noqa: E402
from utils.io import write_png  # noqa: E402
from utils.metrics import ConfusionMatrix  # noqa: E402

CAMVID_MEAN, CAMVID_STD = STATISTICS["camvid"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], int], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Items per second of `fn` (which returns how many items it processed): median of `repeats`."""
    for _ in range(warmup):
        fn()
    rates = []
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        items = fn()
        sync(device)
        rates.append(items / (time.perf_counter() - began))
    return statistics.median(rates)


def make_dataset(folder: Path, count: int, size: tuple[int, int]) -> tuple[list[Path], list[Path]]:
    """Street scenes as PNG files, so that both pipelines pay for real decoding."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(count):
        image, label = render_street_scene(size, rng)
        images.append(folder / "img" / f"{i:04d}.png")
        labels.append(folder / "lab" / f"{i:04d}.png")
        write_png(images[-1], image)
        write_png(labels[-1], label)
    return images, labels


class PilPipeline:
    """The per-sample baseline: what a torch Dataset with PIL transforms does for each crop."""

    def __init__(self, images: list[Path], labels: list[Path], crop: int, seed: int = 0):
        self.images, self.labels, self.crop = images, labels, crop
        self.rng = np.random.default_rng(seed)
        self.mean = torch.tensor(CAMVID_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CAMVID_STD).view(3, 1, 1)

    def sample(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.open(self.images[i]).convert("RGB")
        label = Image.open(self.labels[i])
        scale = self.rng.uniform(0.5, 2.0)
        size = (round(image.width * scale), round(image.height * scale))
        image, label = image.resize(size, Image.BILINEAR), label.resize(size, Image.NEAREST)
        if self.rng.random() < 0.5:
            image, label = image.transpose(Image.FLIP_LEFT_RIGHT), label.transpose(Image.FLIP_LEFT_RIGHT)
        pad_w, pad_h = max(0, self.crop - size[0]), max(0, self.crop - size[1])
        if pad_w or pad_h:
            canvas = Image.new("RGB", (size[0] + pad_w, size[1] + pad_h), tuple(int(m) for m in CAMVID_MEAN))
            canvas.paste(image)
            label_canvas = Image.new("L", canvas.size, IGNORE_INDEX)
            label_canvas.paste(label)
            image, label = canvas, label_canvas
        x0 = int(self.rng.integers(0, image.width - self.crop + 1))
        y0 = int(self.rng.integers(0, image.height - self.crop + 1))
        box = (x0, y0, x0 + self.crop, y0 + self.crop)
        image_t = torch.from_numpy(np.array(image.crop(box))).permute(2, 0, 1).float()
        return (image_t - self.mean) / self.std, torch.from_numpy(np.array(label.crop(box))).long()

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        samples = [self.sample(i) for i in indices]
        return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def confusion_loop(target: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """The thesis's way: one Python step, with numpy indexing, per pixel."""
    mat = np.zeros((n, n), np.int64)
    for i in range(target.shape[0]):
        for j in range(target.shape[1]):
            if target[i, j] < n:
                mat[target[i, j], pred[i, j]] += 1
    return mat


class Denormalised(torch.nn.Module):
    """Feeds the baseline's normalised floats to our model, which normalises inside."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(CAMVID_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CAMVID_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.std + self.mean)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, rt: Runtime) -> None:
    with rt.autocast():
        loss = cross_entropy(model(images), labels, IGNORE_INDEX)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def processor() -> str:
    """The CPU's model name and whether it has bf16 instructions, e.g. 'AMD EPYC (bf16: no)'."""
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{name or 'unknown CPU'} (bf16: {'yes' if cpu_has_native_bf16() else 'no'})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes on a laptop CPU")
    parser.add_argument("--json", type=Path, help="also write every figure and ratio here")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--crop", type=int, default=448)
    parser.add_argument("--size", default="960x720", help="image size WxH for evaluation and pseudo-labels")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--compile", action="store_true", help="torch.compile our model (COMPILE=True)")
    parser.add_argument("--skip-baselines", action="store_true", help="time our path only (the GPU check)")
    parser.add_argument("--precisions", default="fp32,bf16", help="our path in each of these, side by side")
    args = parser.parse_args(argv)
    args.precisions = args.precisions.split(",")
    if not set(args.precisions) <= {"fp32", "bf16"}:
        parser.error(f"--precisions={','.join(args.precisions)}: give fp32, bf16 or both, e.g. fp32,bf16")
    if args.quick:
        args.crop, args.size, args.batch, args.images = 192, "240x180", 8, 16
    device = resolve_device(args.device)
    args.auto = resolve_precision("auto", device)  # the plain figures are those of the precision runs choose
    if args.auto not in args.precisions:
        args.precisions.append(args.auto)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    width, height = (int(v) for v in args.size.split("x"))
    repeats = 3
    figures: dict[str, float] = {}

    with tempfile.TemporaryDirectory() as tmp:
        image_paths, label_paths = make_dataset(Path(tmp), args.images, (width, height))
        images = load_images(image_paths).to(device)
        labels = load_labels(label_paths, LOOKUP).to(device)
        pil = PilPipeline(image_paths, label_paths, args.crop)
        generator = torch.Generator().manual_seed(0)
        n = len(image_paths)

        def ours_batch() -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.randint(0, n, (args.batch,), generator=generator).to(device)
            return scale_crop_flip(images[index], labels[index], args.crop, CAMVID_MEAN, IGNORE_INDEX, generator)

        def pil_batch() -> tuple[torch.Tensor, torch.Tensor]:
            batch = pil.batch(np.random.default_rng().integers(0, n, args.batch).tolist())
            return batch[0].to(device), batch[1].to(device)

        figures["data_samples_per_s"] = timed(lambda: len(ours_batch()[0]), device, repeats * 3)
        if not args.skip_baselines:
            figures["data_samples_per_s_baseline"] = timed(lambda: len(pil_batch()[0]), device, repeats)

        model = swiftnet_rn18(NUM_CLASSES, CAMVID_MEAN, CAMVID_STD).to(device).train()
        eval_count = min(n, 8 if args.quick else n)
        eval_images, eval_labels = images[:eval_count], labels[:eval_count]
        out = Path(tmp) / "pseudo"
        out.mkdir()
        for precision in args.precisions:  # each on its own copy: channels-last changes the weights' layout
            rt = Runtime(device, precision=precision)
            fast_model = rt.prepare(copy.deepcopy(model))
            if args.compile:
                fast_model = torch.compile(fast_model)
            fast_optimizer = torch.optim.Adam(fast_model.parameters(), lr=1e-4)

            def train_ours() -> int:
                x, y = ours_batch()
                train_step(fast_model, fast_optimizer, x, y, rt)
                return len(x)

            def eval_ours() -> int:
                evaluate(fast_model, slices(eval_images, eval_labels, 8), NUM_CLASSES, rt)
                return eval_count

            def pseudo_ours() -> int:
                with ThreadPoolExecutor(4) as writer:
                    for start in range(0, eval_count, 8):
                        probs = predict_probs(fast_model, eval_images[start : start + 8], rt)
                        for k, label in enumerate(probs.argmax(1).to(torch.uint8).cpu().numpy()):
                            writer.submit(write_png, out / f"{start + k}.png", label)
                return eval_count

            fast_model.train()
            for key, work in [("train_crops_per_s", train_ours), ("eval_images_per_s", eval_ours),
                              ("pseudo_images_per_s", pseudo_ours)]:
                figures[f"{key}_{precision}"] = timed(work, device, repeats)
                if precision == args.auto:
                    figures[key] = figures[f"{key}_{precision}"]

        if not args.skip_baselines:
            baseline_model = Denormalised(model).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            fp32 = Runtime(device)

            def train_baseline() -> int:
                x, y = pil_batch()
                train_step(baseline_model, optimizer, x, y, fp32)
                return len(x)

            def eval_baseline() -> int:
                model.eval()
                cm = ConfusionMatrix(NUM_CLASSES, device)
                with torch.no_grad():
                    for i in range(eval_count):
                        cm.update(eval_labels[i], model(eval_images[i : i + 1].float()).argmax(1))
                return eval_count

            def pseudo_baseline() -> int:
                model.eval()
                with torch.no_grad():
                    for i in range(eval_count):
                        label = model(eval_images[i : i + 1].float()).argmax(1)[0].to(torch.uint8).cpu().numpy()
                        Image.fromarray(label).save(out / f"b{i}.png")
                return eval_count

            model.train()
            figures["train_crops_per_s_baseline"] = timed(train_baseline, device, repeats)
            figures["eval_images_per_s_baseline"] = timed(eval_baseline, device, repeats)
            figures["pseudo_images_per_s_baseline"] = timed(pseudo_baseline, device, repeats)

    target = torch.randint(0, NUM_CLASSES + 1, (4, height, width), device=device)
    pred = torch.randint(0, NUM_CLASSES, (4, height, width), device=device)
    cm = ConfusionMatrix(NUM_CLASSES, device)

    def confusion_ours() -> int:
        cm.update(target, pred)
        return target.numel()

    rows = 20  # the loop is timed on a strip of the image: per pixel it costs the same everywhere
    strip_t, strip_p = target[0, :rows].cpu().numpy(), pred[0, :rows].cpu().numpy()

    def confusion_baseline() -> int:
        confusion_loop(strip_t, strip_p, NUM_CLASSES)
        return strip_t.size

    figures["confusion_mpixel_per_s"] = timed(confusion_ours, device, repeats * 3) / 1e6
    if not args.skip_baselines:
        figures["confusion_mpixel_per_s_baseline"] = timed(confusion_baseline, device, repeats) / 1e6
        masks = synthetic_masks(5 if args.quick else 20)
        figures["mask_maker_ms"] = time_lut(masks)[1]
        loop_rows = 24
        began = time.perf_counter()
        python_loop(masks[0][:loop_rows])
        figures["mask_maker_ms_baseline"] = (time.perf_counter() - began) * 1000 * masks[0].shape[0] / loop_rows

    figures["host_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        figures["device_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    report(figures, device, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else processor()
        args.json.write_text(json.dumps({"device": name, "threads": torch.get_num_threads(), "crop": args.crop,
                                         "size": args.size, "batch": args.batch, "compile": args.compile,
                                         "auto_precision": args.auto, **figures}, indent=2) + "\n")


def report(figures: dict[str, float], device: torch.device, args: argparse.Namespace) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else processor()
    print(f"device: {name}, {torch.get_num_threads()} threads; crop {args.crop}, batch {args.batch}, images "
          f"{args.size}; PRECISION=auto chooses {args.auto}")
    precisions = [p for p in ("fp32", "bf16") if p in args.precisions]
    both = len(precisions) == 2
    print(f"{'':<28}" + "".join(f"{'ours ' + p:>12}" for p in precisions) + (f"{'bf16/fp32':>11}" if both else "")
          + f"{'baseline':>12}{'ours/base':>11}")
    rows = [("data_samples_per_s", "data_ratio", "samples/s (data path only)"),
            ("train_crops_per_s", "train_ratio", "crops/s (training)"),
            ("eval_images_per_s", "eval_ratio", "images/s (evaluation)"),
            ("pseudo_images_per_s", "pseudo_ratio", "images/s (pseudo-labels)"),
            ("confusion_mpixel_per_s", "confusion_ratio", "Mpixel/s (confusion matrix)"),
            ("mask_maker_ms", "mask_maker_ratio", "ms per mask (lower wins)")]
    for key, ratio_key, label in rows:
        if key not in figures:
            continue
        if f"{key}_fp32" in figures or f"{key}_bf16" in figures:  # timed in each precision
            values = [figures[f"{key}_{p}"] for p in precisions]
            line = f"{label:<28}" + "".join(f"{v:>12.2f}" for v in values)
            if both:
                figures[ratio_key.replace("_ratio", "_bf16_over_fp32")] = values[1] / values[0]
                line += f"{values[1] / values[0]:>10.2f}x"
        else:  # the same in every precision
            line = f"{label:<28}{figures[key]:>12.2f}" + " " * (12 * (len(precisions) - 1) + 11 * both)
        ours, base = figures[key], figures.get(f"{key}_baseline")
        if base is None:
            print(line + f"{'-':>12}{'-':>11}")
            continue
        ratio = base / ours if key == "mask_maker_ms" else ours / base
        figures[ratio_key] = ratio
        print(line + f"{base:>12.2f}{ratio:>10.1f}x")
    print(f"peak host memory {figures['host_peak_mib']:.0f} MiB"
          + (f", device {figures['device_peak_mib']:.0f} MiB" if "device_peak_mib" in figures else ""))


if __name__ == "__main__":
    main()

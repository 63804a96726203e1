"""Save every Nth frame of a CamVid video as PNG: the unlabeled pool that the teacher pseudo-labels.

Frames are named `<sequence>_f<frame>.png` (the frame's number in decoding order from 0, zero-padded so that
names sort in frame order), so that a pseudo label can be traced back to its place in the video.

    python data/extract_frames.py 0006R0.MXF --every 30
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

if __package__ in (None, ""):  # run as `python data/extract_frames.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.io import write_png  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "camvid" / "unlabeled" / "train"


def leaks_test_frames(sequence: str) -> bool:
    """True for the sequences the test split was drawn from (0001TP, Seq05VD)."""
    return any(tag in sequence.upper() for tag in ("0001TP", "05VD"))


def extract(video: Path, out: Path, every: int, max_frames: int | None = None) -> int:
    """Write frames 0, every, 2*every, ... of `video` into `out`; returns how many were saved."""
    try:
        import av  # only this tool decodes video, so PyAV stays an optional dependency
    except ImportError:
        raise SystemExit("extract_frames needs PyAV to decode video: pip install av") from None
    if not video.is_file():
        raise SystemExit(f"extract_frames: {video} not found; give the path of a CamVid video.")
    try:
        container = av.open(str(video))
    except av.error.FFmpegError as error:
        raise SystemExit(f"extract_frames: cannot decode {video} ({error}); "
                         f"is it a video file (.MXF, .avi, .mp4)?") from None
    with container:
        if not container.streams.video:
            raise SystemExit(f"extract_frames: {video} has no video stream.")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        saved = 0
        with tqdm(container.decode(stream), total=stream.frames or None, desc=video.stem, unit="frame") as frames:
            for number, frame in enumerate(frames):
                if number % every == 0:
                    write_png(out / f"{video.stem}_f{number:05d}.png", frame.to_ndarray(format="rgb24"))
                    saved += 1
                    if saved == max_frames:
                        break
    return saved


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path, help="CamVid video (.MXF, .avi, .mp4)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the frames (default %(default)s)")
    parser.add_argument("--every", type=positive_int, default=30,
                        help="keep every Nth frame (default 30: one per second, like the labels)")
    parser.add_argument("--max-frames", type=positive_int, default=None, help="stop after saving this many frames")
    args = parser.parse_args(argv)
    if leaks_test_frames(args.video.stem):
        print(f"warning: {args.video.stem} is a test-split sequence (0001TP, Seq05VD); training on "
              f"its frames leaks test images", file=sys.stderr)
    saved = extract(args.video, args.out, args.every, args.max_frames)
    print(f"saved {saved} frames of {args.video} (every {args.every}) to {args.out}")


if __name__ == "__main__":
    main()

"""CIFAR-10 from the standard python pickle files.

torchvision's CIFAR10 class checks MD5 sums and so rejects the synthetic stand-in of data/synthetic.py; this
reader loads both and checks what it reads, so a truncated or foreign file fails with its name. Images stay
uint8: the model normalises them with MEAN and STD.
"""
from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from utils.errors import UserError

CIFAR_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
MEAN = (125.31, 122.95, 113.87)  # of the 50k train images, RGB in [0, 255]
STD = (62.99, 62.09, 66.70)
NUM_CLASSES = len(CIFAR_CLASSES)
CIFAR_FOLDER = "cifar-10-batches-py"
TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ROW_LENGTH = 3 * 32 * 32


@dataclass(frozen=True)
class CifarData:
    """The whole data set in memory: 60k uint8 images are only 180 MB."""

    train_images: torch.Tensor  # uint8 (N, 3, 32, 32)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]


def load_cifar10(root: str | Path, download: bool = True) -> CifarData:
    """Load `root/cifar-10-batches-py/`, downloading it first when allowed and missing."""
    root = Path(root)
    folder = root / CIFAR_FOLDER
    files = [folder / name for name in (*TRAIN_FILES, TEST_FILE, META_FILE)]
    placement = (f"Expected {folder}/data_batch_1 ... data_batch_5, {folder}/test_batch and {folder}/{META_FILE}. "
                 f"Download {DOWNLOAD_URL} and extract it into {root} (tar -xzf cifar-10-python.tar.gz -C {root}).")
    if not all(path.is_file() for path in files):
        if not download:
            raise UserError(f"CIFAR-10 files are missing. {placement}")
        try:  # torchvision fetches and extracts the archive into exactly the folder read here
            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        except Exception as error:  # offline, proxy, checksum or disk errors all need the same fix
            raise UserError(f"Could not download CIFAR-10 ({error}). {placement}") from error
        if not all(path.is_file() for path in files):
            raise UserError(f"The CIFAR-10 download left files missing. {placement}")
    train_images, train_labels = zip(*(_read_batch(folder / name) for name in TRAIN_FILES))
    test_images, test_labels = _read_batch(folder / TEST_FILE)
    meta = folder / META_FILE
    names = read_pickle(meta).get(b"label_names")
    if not (isinstance(names, list) and len(names) == len(CIFAR_CLASSES)):
        raise UserError(f"{meta}: b'label_names' must list 10 class names; {_refetch_help(meta)}")
    return CifarData(torch.cat(train_images), torch.cat(train_labels), test_images, test_labels,
                     tuple(name.decode() if isinstance(name, bytes) else str(name) for name in names))


def split_labeled(labels: torch.Tensor, fraction: float, balanced: bool,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose which training images keep their labels; the rest become the unlabeled pool.

    Returns (labeled, unlabeled) sorted index tensors that together cover every image once.
    `balanced` takes round(fraction * N) // num_classes images of every class, so that a tiny
    labeled set does not miss a class by chance.
    """
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"the labeled fraction must lie in [0, 1], got {fraction}")
    count = round(fraction * labels.numel())
    generator = torch.Generator().manual_seed(seed)
    if balanced:
        num_classes = int(labels.max()) + 1
        per_class = count // num_classes
        picks = []
        for cls in range(num_classes):
            members = (labels == cls).nonzero().flatten()
            if members.numel() < per_class:
                raise UserError(f"class {cls} has only {members.numel()} images but a balanced split needs "
                                f"{per_class} per class; lower the fraction or use an unbalanced split")
            picks.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
        labeled = torch.cat(picks)
    else:
        labeled = torch.randperm(labels.numel(), generator=generator)[:count]
    chosen = torch.zeros(labels.numel(), dtype=torch.bool)
    chosen[labeled] = True
    return chosen.nonzero().flatten(), (~chosen).nonzero().flatten()


class _CifarUnpickler(pickle.Unpickler):
    """Only what the CIFAR-10 format holds (dicts, lists, bytes, str, ints and numpy arrays): a pickle that
    asks for anything else could run code, and is refused."""

    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
               ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
               ("_codecs", "encode"): codecs.encode}  # how Python 3 pickles bytes at protocol 2

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 file never holds: "
                                         "do not trust it")
        return self.allowed[(module, name)]


def read_pickle(path: Path) -> dict[bytes, Any]:
    """A CIFAR-10 pickle, as the original Python 2 files must be read (keys come back as bytes)."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="bytes").load()
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror or error}); {_refetch_help(path)}") from error
    except Exception as error:  # a damaged pickle fails in many ways (overflow, memory, unknown opcodes)
        raise UserError(f"{path} is not a CIFAR-10 pickle ({type(error).__name__}: {error}); "
                        f"{_refetch_help(path)}") from error
    if not isinstance(entry, dict):
        raise UserError(f"{path} holds a {type(entry).__name__}, not a dict; {_refetch_help(path)}")
    return entry


def _refetch_help(path: Path) -> str:
    return f"replace it with the one in {DOWNLOAD_URL} (extract the archive into {path.parent.parent})"


def _read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch as uint8 (N, 3, 32, 32) images and int64 labels, checked before use."""
    entry = read_pickle(path)
    data = entry.get(b"data")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == ROW_LENGTH):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: b'data' must be a uint8 array of shape (N, {ROW_LENGTH}), found {found}; "
                        f"{_refetch_help(path)}")
    count = data.shape[0]
    problem = UserError(f"{path}: b'labels' must list {count} integers in 0..9; {_refetch_help(path)}")
    try:
        labels = np.asarray(entry.get(b"labels"), dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise problem from error
    if labels.shape != (count,) or (count and not 0 <= labels.min() <= labels.max() <= 9):
        raise problem
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)

"""Image datasets for calibration and parity, decoded and preprocessed batch by batch as they are read.

`imagefolder:PATH` (class sub-folders, torchvision's ImageFolder rules), `cifar10:ROOT` and `mnist:ROOT`
(torchvision's on-disk formats, never downloaded; `cifar10-train:ROOT`, `mnist-train:ROOT` for the training
splits). Preprocessing is torchvision's: resize the shorter side, center crop, to [0, 1], normalize; images are
decoded to the model's channel count only when asked (`color`), never silently.

Memory: image files are read batch by batch by a DataLoader's workers; CIFAR-10 and MNIST are single files that
hold their images as uint8 (30 MB for CIFAR-10's test split), which stay in memory while float32 batches are
made from them. An image that cannot be decoded is refused, naming the file: a parity or accuracy figure over
a silently different set of images is not the one asked for.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..choices import PRESETS
from ..choices import SCRATCH_PREFIX
from ..errors import BridgeError
from .arrays import Dataset, random_subset
from .preprocessing import COLORS, Preprocessing

IMAGE_SPECS = ("imagefolder", "cifar10", "cifar10-train", "mnist", "mnist-train")
# PIL: unidentified or truncated files, broken chunks, images over Image.MAX_IMAGE_PIXELS (a decompression bomb)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
CIFAR_BATCHES = {"cifar10": ["test_batch"], "cifar10-train": [f"data_batch_{i}" for i in range(1, 6)]}


@dataclass
class _Images:
    """The images of one dataset, undecoded: file paths or uint8 arrays (N, H, W[, 3]), and their labels."""

    name: str
    labels: np.ndarray
    classes: int
    mode: str  # the PIL mode the dataset decodes to on its own
    size: tuple[int, int] | None  # (H, W) when every image has it
    paths: list[str] | None = None
    pixels: np.ndarray | None = None

    def image(self, index: int) -> Image.Image:
        if self.paths is None:
            return Image.fromarray(self.pixels[index])  # (H, W): mode L, (H, W, 3): RGB
        with Image.open(self.paths[index]) as image:
            image.load()
            return image

    def where(self, index: int) -> str:
        return self.paths[index] if self.paths is not None else f"{self.name} image {index}"


class _Decoded:
    """A map-style dataset for torch's DataLoader: (float32 C x H x W, label, "" or why the image is unreadable,
    seconds spent). Decoding errors come back as values, so the main process can name the file in a one-line
    error (a DataLoader re-raises a worker's exception wrapped in its traceback)."""

    def __init__(self, images: _Images, indices: np.ndarray, transform, shape: tuple[int, ...], mode: str):
        self.images, self.indices, self.transform, self.shape, self.mode = images, indices, transform, shape, mode

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        start = time.perf_counter()
        index = int(self.indices[position])
        try:
            image = self.images.image(index)
            x = self.transform(image if image.mode == self.mode else image.convert(self.mode))
            problem = ""
        except DECODE_ERRORS as exc:
            x, problem = torch.zeros(self.shape), f"image '{self.images.where(index)}' cannot be read ({exc})"
        return x, int(self.images.labels[index]), problem, time.perf_counter() - start


@dataclass
class ImageSource:
    """A streamed, labelled image dataset (see the module docstring); `fit` sizes it for a model, then
    `labelled_batches` decodes it in a DataLoader's worker processes."""

    images: _Images
    preprocessing: Preprocessing
    indices: np.ndarray
    workers: int = 2
    shape: tuple[int, ...] | None = None  # (C, H, W) once fitted to a model
    decode_seconds: float = 0.0  # spent decoding and preprocessing by the last labelled_batches, in all workers

    @property
    def name(self) -> str:
        subset = f"[{len(self)} of {len(self.images.labels)}]" if len(self) < len(self.images.labels) else ""
        return self.images.name + subset

    @property
    def classes(self) -> int:
        return self.images.classes

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The per-sample shape the data fixes by itself: (C, H, W) of an explicit crop or of a dataset whose
        images all have one size; None for a folder of images of any size."""
        if self.shape:
            return self.shape
        size = self.preprocessing.crop or (self.images.size if self.preprocessing.resize is None else None)
        return (self._channels(), *size) if size else None

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, count: int | None, seed: int) -> ImageSource:
        return dataclasses.replace(self, indices=self.indices[random_subset(len(self), count, seed)])

    def fit(self, input_shape: tuple[int, ...] | None) -> ImageSource:
        """This dataset preprocessed into the model's per-sample shape (C, H, W); None: its own shape. A color or
        size that differs from the model's is refused with the option that converts it."""
        if input_shape is None:
            shape = self.sample_shape
            if shape is None:
                raise BridgeError(f"the image size for {self.images.name} is unknown (the images differ in size)",
                                  "pass --input-shape N,C,H,W or --center-crop SIZE")
        else:
            shape = tuple(input_shape[1:])
        if len(shape) != 3:
            raise BridgeError(f"the model takes inputs of shape {tuple(shape)}, not images",
                              "use an .npz dataset with arrays of that shape")
        channels = self._channels()
        if shape[0] != channels:
            color = "rgb" if shape[0] == 3 else "gray"
            raise BridgeError(f"dataset {self.images.name} gives {channels}-channel images, the model takes "
                              f"{shape[0]}-channel inputs", f"pass --color {color} to decode the images as {color}")
        crop = self.preprocessing.crop
        if crop and tuple(crop) != tuple(shape[1:]):
            raise BridgeError(f"--center-crop {crop[0]}x{crop[1]} makes images the model cannot take "
                              f"({shape[1]}x{shape[2]})", f"crop to {shape[1]},{shape[2]} or pass --input-shape")
        fitted = dataclasses.replace(self, shape=tuple(shape))
        resize = fitted._resize()
        if resize < max(shape[1:]):
            raise BridgeError(f"--resize {resize} makes images smaller than the {shape[1]}x{shape[2]} crop",
                              f"pass --resize {max(shape[1:])} or more")
        mean = fitted._settings().get("mean")
        if mean is not None and len(mean) not in (1, channels):
            raise BridgeError(f"--mean/--std have {len(mean)} values for {channels}-channel images",
                              f"pass 1 or {channels} values")
        return fitted

    def resolved(self) -> dict:
        """The preprocessing applied, every step spelled out (for the report)."""
        fitted = self if self.shape else self.fit(None)
        settings = fitted._settings()
        return {"color": [color for color, mode in COLORS.items() if mode == fitted._mode()][0],
                "resize": fitted._resize(), "crop": list(fitted.shape[1:]),
                "mean": list(settings["mean"]) if settings.get("mean") else None,
                "std": list(settings["std"]) if settings.get("std") else None,
                **({"preset": self.preprocessing.preset} if self.preprocessing.preset else {})}

    def head(self, count: int):
        """The first `count` samples, decoded here (no workers), as an in-memory Dataset."""
        decoded = self._decoded()
        rows = [decoded[i] for i in range(min(count, len(decoded)))]
        _refuse_unreadable([row[2] for row in rows])
        return Dataset(self.name, torch.stack([row[0] for row in rows]).numpy(), np.array([row[1] for row in rows]))

    def labelled_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(inputs, labels) batches, decoded by `workers` processes a couple of batches ahead."""
        from torch.utils.data import DataLoader

        decoded = self._decoded()
        workers = min(self.workers, -(-len(decoded) // batch_size))
        loader = DataLoader(decoded, batch_size=batch_size, num_workers=workers, shuffle=False,
                            prefetch_factor=2 if workers else None)
        self.decode_seconds = 0.0
        for x, y, problems, seconds in loader:
            _refuse_unreadable(problems)
            self.decode_seconds += float(seconds.sum())
            yield x.numpy(), y.numpy()

    def _decoded(self) -> _Decoded:
        import torchvision.transforms as T

        fitted = self if self.shape else self.fit(None)
        settings = fitted._settings()
        steps = [T.Resize(fitted._resize()), T.CenterCrop(fitted.shape[1:]), T.ToTensor()]
        if settings.get("mean"):
            steps.append(T.Normalize(settings["mean"], settings["std"]))
        return _Decoded(self.images, self.indices, T.Compose(steps), fitted.shape, fitted._mode())

    def _settings(self) -> dict:
        """The explicit fields over the preset's."""
        preset = PRESETS.get(self.preprocessing.preset, {})
        return {**preset, **{k: v for k, v in dataclasses.asdict(self.preprocessing).items() if v is not None}}

    def _mode(self) -> str:
        color = self._settings().get("color")
        return COLORS[color] if color else self.images.mode

    def _channels(self) -> int:
        return 1 if self._mode() == "L" else 3

    def _resize(self) -> int:
        settings, longer = self._settings(), max(self.shape[1:])
        if self.preprocessing.resize is not None:
            return self.preprocessing.resize
        return round(longer * settings["resize_ratio"]) if "resize_ratio" in settings else longer


def _refuse_unreadable(problems) -> None:
    for problem in problems:
        if problem:
            raise BridgeError(problem, "remove or replace the file (unreadable images are refused, "
                                                  "not skipped, so the figures cover the whole dataset)")


def open_images(spec: str, preprocessing: Preprocessing, workers: int) -> ImageSource:
    """`imagefolder:PATH`, `cifar10[-train]:ROOT` or `mnist[-train]:ROOT` as a streamed source."""
    kind, _, root = spec.partition(":")
    path = Path(root).expanduser()
    if not root or not path.is_dir():
        raise BridgeError(f"dataset folder '{root}' not found", f"{kind}:PATH takes an existing folder")
    reader = {"imagefolder": _image_folder, "cifar10": _cifar10, "cifar10-train": _cifar10,
              "mnist": _mnist, "mnist-train": _mnist}[kind]
    images = reader(path, kind)
    return ImageSource(images, preprocessing, np.arange(len(images.labels)), workers)


def _image_folder(path: Path, kind: str) -> _Images:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    # torchvision's classes (every sub-folder, sorted), less a convert's own scratch: `-o` may be this folder
    classes = sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and
                     not entry.name.startswith(SCRATCH_PREFIX))
    if not classes:
        raise BridgeError(f"folder '{path}' has no class sub-folders",
                          "imagefolder:PATH takes a folder with one sub-folder of images per class")
    class_to_idx = {name: index for index, name in enumerate(classes)}
    samples = make_dataset(str(path), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    counts = np.bincount([label for _, label in samples], minlength=len(classes))
    if not counts.all():
        empty = classes[int(np.argmin(counts))]
        raise BridgeError(f"class folder '{path / empty}' has no images ({', '.join(IMG_EXTENSIONS)})",
                          "add its images or remove the folder (every sub-folder is a class)")
    return _Images(f"imagefolder:{path.name}", np.array([label for _, label in samples], np.int64), len(classes),
                   "RGB", None, paths=[p for p, _ in samples])


class _ArraysOnly(pickle.Unpickler):
    """CIFAR-10's batches are pickles; this unpickler admits only the numpy arrays, lists and dicts they hold,
    so a crafted file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the file refers to '{module}.{name}'")


def _cifar10(root: Path, kind: str) -> _Images:
    folder = root / "cifar-10-batches-py"
    pixels, labels = [], []  # per batch file
    for name in CIFAR_BATCHES[kind]:
        path = folder / name
        if not path.is_file():
            raise BridgeError(f"CIFAR-10 file '{path}' not found", "cifar10:ROOT takes the folder holding "
                              "cifar-10-batches-py/ (torchvision's layout; nothing is downloaded)")
        try:
            with open(path, "rb") as file:
                entry = _ArraysOnly(file, encoding="latin1").load()
            pixels.append(np.asarray(entry["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(entry["labels"], np.int64))
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
            raise BridgeError(f"'{path}' is not a CIFAR-10 batch ({type(exc).__name__}: {exc})",
                              "replace it with the file from the python version of CIFAR-10") from None
        _check_labels(pixels[-1], labels[-1], 10, "CIFAR-10", path)
    return _Images(kind, np.concatenate(labels), 10, "RGB", (32, 32), pixels=np.concatenate(pixels))


def _mnist(root: Path, kind: str) -> _Images:
    """torchvision's readers of MNIST's IDX files, for the split asked for alone (its MNIST class wants all four)."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    split = "train" if kind == "mnist-train" else "t10k"
    folder = root / "MNIST" / "raw"
    images, labels = folder / f"{split}-images-idx3-ubyte", folder / f"{split}-labels-idx1-ubyte"
    if not images.is_file() or not labels.is_file():
        raise BridgeError(f"MNIST files not found in '{folder}'",
                          f"mnist:ROOT takes the folder holding MNIST/raw/{images.name} and {labels.name} "
                          "(torchvision's layout, uncompressed; nothing is downloaded)")
    arrays = []
    for path, read in ((images, read_image_file), (labels, read_label_file)):
        try:
            arrays.append(read(str(path)).numpy())
        except (AssertionError, RuntimeError, ValueError, IndexError) as exc:  # its checks of the IDX header
            raise BridgeError(f"'{path}' is not an MNIST {path.name.split('-')[1]} file in IDX format "
                              f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})",
                              "replace it with the uncompressed file from MNIST") from None
    pixels, targets = arrays[0], arrays[1].astype(np.int64)
    _check_labels(pixels, targets, 10, "MNIST", labels)
    return _Images(kind, targets, 10, "L", tuple(pixels.shape[1:]), pixels=pixels)


def _check_labels(pixels: np.ndarray, labels: np.ndarray, classes: int, name: str, path: Path) -> None:
    """One label per image, each a class of the dataset's: a label out of range would be judged as a class the
    model does not have."""
    if len(labels) != len(pixels):
        raise BridgeError(f"'{path}' has {len(labels)} labels for {len(pixels)} images",
                          f"replace the {name} files with a matching pair")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise BridgeError(f"'{path}' has labels from {labels.min()} to {labels.max()}, and {name} has {classes} "
                          f"classes (0 to {classes - 1})", f"replace it with the file from {name}")

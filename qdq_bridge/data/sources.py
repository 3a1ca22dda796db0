"""Datasets for calibration and parity: scikit-learn's bundled digits, the user's own .npz file (in memory), or
an image folder, CIFAR-10 or MNIST on disk (streamed, `qdq_bridge.data.images`).

Every dataset is a source the pipeline streams: `name`, `len`, `classes` (how many classes its labels span),
`sample_shape`, `subset(count, seed)`, `fit(input_shape)` (checked, or preprocessed, for the model), `head(n)`
(the first rows in memory, for the checks that need only a few), `labelled_batches(batch_size)` and
`decode_seconds` (None for arrays in memory). The arrays are `qdq_bridge.data.arrays.Dataset`, the streamed images
`qdq_bridge.data.images.ImageSource`; this module opens a spec as one of them (neither imports it)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..choices import default_workers
from ..errors import BridgeError, readable_file
from .arrays import Dataset
from .images import IMAGE_SPECS, Preprocessing, open_images

DIGITS_SIZE = 32  # the 8x8 digits are upsampled so the example CNN has room for two stride-2 stages


def digits_split(size: int = DIGITS_SIZE, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The 1,797 8x8 digits of scikit-learn as (train, test) = (75%, 25%), stratified, 1 x size x size in [0, 1]."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).numpy()
    x_tr, x_te, y_tr, y_te = train_test_split(images, digits.target.astype(np.int64), test_size=0.25,
                                              random_state=seed, stratify=digits.target)
    return Dataset("digits-train", x_tr, y_tr), Dataset("digits-test", x_te, y_te)


def load_dataset(spec: str) -> Dataset:
    """`digits` (the test split), `digits-train`, or a path to an .npz file holding `x` (and optionally `y`)."""
    if spec in ("digits", "digits-test"):
        return digits_split()[1]
    if spec == "digits-train":
        return digits_split()[0]
    path = Path(spec)
    if path.exists() or path.is_symlink():
        readable_file(path, "dataset")  # a folder, a link loop, unreadable: says so
    else:
        raise BridgeError(f"dataset '{spec}' not found",
                          "use 'digits', the path to an .npz file with an array 'x' (and optional labels 'y'), "
                          "imagefolder:PATH, cifar10:ROOT or mnist:ROOT")
    try:
        arrays = np.load(path, allow_pickle=False)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise BridgeError(f"dataset '{spec}' is a single array (.npy), not an .npz of arrays x and y",
                              "save it with numpy.savez(path, x=inputs, y=labels)")
        with arrays:
            x = arrays["x"].astype(np.float32)
            y = arrays["y"].astype(np.int64) if "y" in arrays else None
            if arrays["x"].dtype == np.uint8:  # decoded pixels saved as they are: no preprocessing happens here
                logging.getLogger("qdq_bridge").warning(
                    "dataset '%s' holds uint8 inputs (0-255), fed to the model as they are: arrays are taken as "
                    "preprocessed; save them scaled and normalized as in training, or pass an image dataset "
                    "(imagefolder:PATH) with --preprocess", spec)
    except (KeyError, ValueError, OSError) as exc:
        raise BridgeError(f"dataset '{spec}' is not a usable .npz file ({exc})",
                          "save it with numpy.savez(path, x=inputs, y=labels)") from None
    return _checked(Dataset(path.stem, x, y), spec)


def _checked(data: Dataset, spec: str) -> Dataset:
    """Refuses arrays no verdict can rest on: no samples, labels that do not pair with the inputs, inputs that
    are not finite."""
    fix = "save it with numpy.savez(path, x=inputs, y=labels), one label (or one label map) per input"
    if not len(data.x) or data.x.ndim < 2:
        raise BridgeError(f"dataset '{spec}' has no samples (x has shape {data.x.shape})", fix)
    if data.y is not None and data.y.shape[:1] != (len(data.x),):
        raise BridgeError(f"dataset '{spec}' has {len(data.x)} inputs but labels of shape {data.y.shape}", fix)
    bad = int((~np.isfinite(data.x)).sum())
    if bad:
        raise BridgeError(f"dataset '{spec}' has {bad} non-finite values (NaN or infinity) in x",
                          "replace or drop those samples")
    return data


def open_dataset(spec: str, preprocessing: Preprocessing | None = None, fallback: Preprocessing | None = None,
                 workers: int | None = None):
    """The source a dataset spec names: `digits`, an .npz file, or an image dataset (`images.IMAGE_SPECS`,
    preprocessed by `preprocessing` over `fallback`, e.g. the model file's metadata, and decoded by `workers`
    processes). Arrays are preprocessed already, so preprocessing options given for them are refused."""
    preprocessing = preprocessing or Preprocessing()
    if spec.partition(":")[0] in IMAGE_SPECS:
        return open_images(spec, preprocessing.over(fallback), default_workers() if workers is None else workers)
    if Path(spec).is_dir():
        raise BridgeError(f"dataset '{spec}' is a folder", f"pass imagefolder:{spec} for class sub-folders of images")
    if preprocessing.given:
        raise BridgeError(f"dataset '{spec}' holds arrays, which are preprocessed already",
                          "leave out --preprocess, --resize, --center-crop, --mean, --std and --color, or pass "
                          "an image dataset (imagefolder:PATH, cifar10:ROOT, mnist:ROOT)")
    return load_dataset(spec)


def random_inputs(shape: tuple[int, ...], count: int, seed: int = 0) -> Dataset:
    """Standard-normal inputs of the model's per-sample shape; no labels."""
    rng = np.random.default_rng(seed)
    return Dataset(f"random-normal x{count}", rng.standard_normal((count, *shape[1:]), dtype=np.float32))


def digits_segmentation(count: int, seed: int = 0, size: int = 32, split: str = "test") -> Dataset:
    """A segmentation task from scikit-learn's digits: each sample one digit (of `split`, as `digits_split` makes
    it), upsampled to half the canvas and placed at a random spot on a `size` x `size` canvas with faint noise;
    labels per pixel: 0 for background, the digit + 1 where its ink is (11 classes)."""
    train, test = digits_split(size // 2)
    source = train if split == "train" else test
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(source), count)
    x = (0.05 * rng.standard_normal((count, 1, size, size))).astype(np.float32)
    y = np.zeros((count, size, size), np.int64)
    for row, (pick, (top, left)) in enumerate(zip(picks, rng.integers(0, size // 2 + 1, (count, 2)))):
        digit = source.x[pick, 0]
        window = (slice(top, top + size // 2), slice(left, left + size // 2))
        x[row, 0][window] += digit
        y[row][window] = np.where(digit > 0.35, source.y[pick] + 1, 0)
    return Dataset(f"digits-segmentation-{split} x{count}", x, y)

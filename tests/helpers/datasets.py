"""Datasets on disk in the formats users bring them: CIFAR-10's python batches, MNIST's idx files, image folders."""
import pickle

import numpy as np
from PIL import Image


def write_cifar10(root, pixels: np.ndarray, labels: np.ndarray) -> None:
    """torchvision's cifar-10-batches-py layout: pickled dicts, rows of 3072 bytes (R, G, B planes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rgb = np.repeat(pixels[:, None], 3, axis=1).reshape(len(pixels), -1)
    with open(folder / "test_batch", "wb") as file:
        pickle.dump({"batch_label": "testing batch 1 of 1", "data": rgb, "labels": labels.tolist()}, file, protocol=2)


def write_mnist(root, pixels: np.ndarray, labels: np.ndarray) -> None:
    """torchvision's MNIST/raw layout: big-endian idx files of the test split (t10k) alone."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    header = np.array([0x803, len(pixels), *pixels.shape[1:]], ">i4").tobytes()
    (raw / "t10k-images-idx3-ubyte").write_bytes(header + pixels.tobytes())
    (raw / "t10k-labels-idx1-ubyte").write_bytes(np.array([0x801, len(labels)], ">i4").tobytes()
                                                 + labels.astype(np.uint8).tobytes())


def write_image_folder(root, pixels: np.ndarray, labels: np.ndarray) -> None:
    for index, (image, label) in enumerate(zip(pixels, labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / str(label) / f"{index:04d}.png")


def write_png_claiming(path, width: int, height: int) -> None:
    """A small PNG whose header claims `width` x `height` pixels (a decompression bomb as PIL sees one: it checks
    the claimed size on open)."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8  # the IHDR chunk follows the signature: length (4), type (4), width, height, ..., CRC
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21:ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4:ihdr + 21])))
    path.write_bytes(bytes(data))

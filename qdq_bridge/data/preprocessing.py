"""How images become model inputs (`Preprocessing`): options the command line and the model file's metadata give,
checked on construction; torch-free, so options are checked before the conversion's side is imported."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..choices import PRESETS
from ..errors import BridgeError

COLORS = {"rgb": "RGB", "gray": "L"}  # --color: PIL modes


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs; a field left None is taken from `preset`, then from the defaults:
    crop = the model's input size, resize = the crop's longer side (no margin; a no-op on images already that
    size), no normalization (inputs in [0, 1]), the dataset's own color (RGB for files and CIFAR-10, gray for
    MNIST)."""

    preset: str | None = None
    resize: int | None = None  # shorter side, before the center crop
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    color: str | None = None  # rgb | gray

    def __post_init__(self):
        if self.preset is not None and self.preset not in PRESETS:
            raise BridgeError(f"unknown preprocessing preset '{self.preset}'", f"use one of {', '.join(PRESETS)}")
        if self.color is not None and self.color not in COLORS:
            raise BridgeError(f"unknown color '{self.color}'", f"use one of {', '.join(COLORS)}")
        if isinstance(self.crop, int):  # metadata may say "crop": 224
            object.__setattr__(self, "crop", (self.crop, self.crop))
        if (self.mean is None) != (self.std is None):
            raise BridgeError("mean and std go together", "pass both --mean and --std, or a --preprocess preset")

    @property
    def given(self) -> bool:
        return any(value is not None for value in dataclasses.astuple(self))

    def over(self, fallback: Preprocessing | None) -> Preprocessing:
        """These settings, with the unset fields taken from `fallback` (e.g. the model file's metadata)."""
        if fallback is None:
            return self
        return Preprocessing(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                                else getattr(fallback, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def from_metadata(cls, meta: dict | None) -> Preprocessing | None:
        """From a model file's metadata: {"preset": ..., "resize": ..., "crop": [H, W], "mean": [...], ...}."""
        if not meta:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in meta.items()
                      if key in known})

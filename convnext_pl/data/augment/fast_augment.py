"""Decoding and cropping of the fast training path, drawing the same random numbers as the recipe's crop.

Measured per image on one core (``benchmarks/data_throughput.py --stages``, 500x375 JPEGs at 224), the recipe's
CPU time goes to JPEG decoding, the bicubic crop-resize on a PIL image and RandAugment.
:class:`DecodeRandomResizedCrop` decodes with ``torchvision.io.decode_image`` (the same libjpeg-turbo IDCT as
Pillow: identical pixels, with less Python around it) and resizes only the crop, on the uint8 tensor, with torch's
antialiased bicubic kernel (mean abs difference to Pillow's 0.03 of 255). The image stays a uint8 tensor from
there on: the flip is torchvision's on tensors and RandAugment is only drawn in the worker (``rand_augment.py``).
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import InterpolationMode

from convnext_pl.data.images import CorruptImageError


class DecodeRandomResizedCrop:
    """Encoded image bytes -> a random crop resized to ``size`` (uint8 [3, S, S]), as timm's
    ``RandomResizedCropAndInterpolation`` with bicubic does on a PIL image.

    The crop is drawn by timm's ``get_params`` (python's ``random``, the same draws as the recipe); decoding is
    ``torchvision.io.decode_image`` and the resize torch's antialiased bicubic on uint8 (torchvision's kernel),
    applied to the crop only.

    Args:
        size: output side length.
        scale: area range of the crop.
        ratio: aspect-ratio range of the crop.
        interpolation: ``bicubic`` (the recipe's) or ``bilinear``.
    """

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = "bicubic"):
        self.size = size
        self.interpolation = InterpolationMode(interpolation)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)

    def __call__(self, encoded: tuple[str, torch.Tensor]) -> torch.Tensor:
        return self.crop(self.decode(encoded))

    @staticmethod
    def decode(encoded: tuple[str, torch.Tensor]) -> torch.Tensor:
        """``(path, bytes)`` -> uint8 [3, H, W] RGB; grey, CMYK and PNG files too."""
        path, data = encoded
        try:
            return decode_image(data, mode=ImageReadMode.RGB)
        except RuntimeError as err:  # libjpeg/libpng refused the file (truncated, not an image)
            raise CorruptImageError(
                f"cannot decode image {path} ({err}); replace or delete the file, or set "
                "data.init_args.skip_corrupt: true to leave unreadable images out"
            ) from err

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """A random crop of a decoded uint8 [3, H, W] image, resized to ``size``: uint8 [3, S, S]."""
        top, left, height, width = RandomResizedCropAndInterpolation.get_params(image, self.scale, self.ratio)
        # decode_image's (3, H, W) is a view of (H, W, 3) memory. Only the crop is copied, kept channels-last, so
        # torch's uint8 antialiased kernel (the one torchvision's resized_crop calls) runs on its fast channels-last
        # path (measured: 0.5 ms against 1.1 ms through NCHW).
        crop = image[None, :, top : top + height, left : left + width]
        crop = crop.contiguous(memory_format=torch.channels_last)
        size = (self.size, self.size)
        resized = F.interpolate(crop, size=size, mode=self.interpolation.value, antialias=True)
        return resized[0]  # (3, S, S), channels-last strides; the batch collate makes it contiguous

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, {self.interpolation.value})"


def read_encoded(path: str) -> tuple[str, torch.Tensor]:
    """The file's bytes as a uint8 tensor, with its path for error messages (the fast path's loader)."""
    with open(path, "rb") as f:
        return path, torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def mean_abs_difference(
    a: Image.Image | np.ndarray | torch.Tensor, b: Image.Image | np.ndarray | torch.Tensor
):
    """Mean absolute difference of two uint8 images, in 0..255 levels (tensors are [3, H, W], the rest H, W, 3)."""
    a, b = (x.permute(1, 2, 0).numpy() if isinstance(x, torch.Tensor) else x for x in (a, b))
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())

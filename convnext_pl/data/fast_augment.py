"""Faster pieces of the ImageNet training transform, each drawing the same random numbers as the piece it replaces.

Measured per image on one core (``benchmarks/data_throughput.py``, 500x375 JPEGs at 224), the recipe's CPU time
goes to JPEG decoding, the bicubic crop-resize and RandAugment, and within RandAugment almost all of it to the
four shear/translate ops: Pillow's bicubic affine transform evaluates a 4x4 cubic per pixel through a generic
per-pixel callback in double precision (about 3 ms for a 224x224 RGB image, 25x its colour ops). A shear or
translation along one axis leaves the other coordinate on the pixel grid, so Pillow's 2-D filter reduces to a 1-D
cubic per row (or column) with one fractional offset per row: :func:`shear_x` and friends compute exactly that, in
the same double-precision arithmetic and truncation, and give Pillow's pixels (tests compare them bit for bit).

:class:`DecodeRandomResizedCrop` decodes with ``torchvision.io.decode_image`` (libjpeg-turbo) and crops and
resizes on the uint8 tensor with torchvision's antialiased bicubic kernel, drawing the crop with timm's own
``get_params``; both pieces change pixels slightly, measured in the benchmark's closing table.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import auto_augment as timm_auto_augment
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import InterpolationMode

from convnext_pl.data.images import CorruptImageError


def _cubic_along_rows(image: np.ndarray, offsets: np.ndarray, fill: tuple[int, ...]) -> torch.Tensor:
    """Pillow's bicubic affine resampling when each output row ``y`` samples input row ``y`` at ``x + offsets[y]``.

    Args:
        image: uint8 [H, W, C] (any strides).
        offsets: float64 [H], the shift of each row (``b * (y + 0.5) + c`` for the matrix ``(1, b, c, 0, 1, 0)``).
        fill: colour of pixels whose source lies outside the image.

    Returns:
        uint8 [H, W, C].
    """
    height, width, channels = image.shape
    # Pillow's affine_transform: source x = 1 * (x + 0.5) + b * (y + 0.5) + c, in double precision; a pixel whose
    # source falls outside [0, W) keeps the fill colour. Its filter takes the taps floor(x_src - 0.5) - 1 .. + 2
    # with the fraction as the cubic's offset; along a row that fraction is the same for every pixel.
    source = np.arange(width)[None, :] + 0.5 + offsets[:, None]  # (H, W)
    inside = torch.from_numpy((source >= 0.0) & (source < width))[:, :, None]
    start = np.floor(offsets).astype(np.int64)  # x0 = x + start
    # The a = -1 cubic of Pillow's BICUBIC macro (Geometry.c), as weights of taps x0-1, x0+1, x0+2 (x0's weight is
    # 1 minus their sum), per row.
    d = offsets - start
    weights = torch.from_numpy(np.stack([-d + 2 * d**2 - d**3, d + d**2 - d**3, d**3 - d**2])).to(
        torch.float32
    )
    # Each row's taps x0-1 .. x0+2 for x = 0 .. W-1, sliced from an edge-replicated copy (Pillow clamps taps to
    # the image; replicated edges are the clamped values). A slice per row is cheaper than a gather here.
    pad_left, pad_right = max(0, 1 - int(start.min())), max(0, int(start.max()) + 2)
    padded = np.pad(image, ((0, 0), (pad_left, pad_right), (0, 0)), mode="edge")
    windows = np.empty((height, width + 3, channels), dtype=np.uint8)
    for y, first in enumerate(start - 1 + pad_left):
        windows[y] = padded[y, first : first + width + 3]
    taps = torch.from_numpy(windows).to(torch.float32)  # (H, W + 3, C)
    v1, v2, v3, v4 = (taps[:, k : k + width] for k in range(4))
    # v2 + sum of w_k (v_k - v2) is exactly v2 where the taps are equal (flat areas, fills), as Pillow's Horner
    # form is; elsewhere float32 rounding moves a value by ~1e-5 levels, which changes the truncated result only
    # when it falls that close to an integer (measured: about 6 pixels in a million, by one level).
    values = v2.clone()
    for tap, weight in zip((v1, v3, v4), weights, strict=True):
        values.addcmul_(tap - v2, weight[:, None, None])
    # Pillow's bicubic_filter32RGB: clamp to [0, 255], then truncate.
    values = values.clamp_(0.0, 255.0).to(torch.uint8)
    return torch.where(inside, values, torch.tensor(fill, dtype=torch.uint8)).numpy()


def _fast_case(img: Image.Image, kwargs: dict) -> tuple | None:
    """The fill colour when the op can take the row-wise path (RGB, bicubic), else None."""
    timm_auto_augment._check_args_tf(kwargs)  # resolves ``resample`` exactly as timm does (same random draws)
    if img.mode != "RGB" or kwargs["resample"] != Image.Resampling.BICUBIC:
        return None
    fill = kwargs.get("fillcolor") or (0, 0, 0)
    return tuple(fill) if isinstance(fill, (tuple, list)) else (fill,) * 3


def _affine_1d(img: Image.Image, axis: int, shear: float, shift: float, kwargs: dict) -> Image.Image:
    fill = _fast_case(img, kwargs)
    if fill is None:  # another filter or mode: Pillow itself
        matrix = (1, shear, shift, 0, 1, 0) if axis == 0 else (1, 0, 0, shear, 1, shift)
        return img.transform(img.size, Image.AFFINE, matrix, **kwargs)
    array = np.asarray(img)  # (H, W, 3)
    if axis == 1:  # a y-shear is an x-shear of the transposed image
        array = array.transpose(1, 0, 2)
    rows = np.arange(array.shape[0]) + 0.5
    out = _cubic_along_rows(array, shear * rows + shift, fill)
    if axis == 1:
        out = out.transpose(1, 0, 2)
    return Image.fromarray(np.ascontiguousarray(out))


def shear_x(img: Image.Image, factor: float, **kwargs) -> Image.Image:
    """timm's ``shear_x`` (matrix ``(1, factor, 0, 0, 1, 0)``), computed row by row."""
    return _affine_1d(img, 0, factor, 0.0, kwargs)


def shear_y(img: Image.Image, factor: float, **kwargs) -> Image.Image:
    """timm's ``shear_y`` (matrix ``(1, 0, 0, factor, 1, 0)``), computed column by column."""
    return _affine_1d(img, 1, factor, 0.0, kwargs)


def translate_x_rel(img: Image.Image, pct: float, **kwargs) -> Image.Image:
    """timm's ``translate_x_rel``: a shift by ``pct`` of the width."""
    return _affine_1d(img, 0, 0.0, pct * img.size[0], kwargs)


def translate_y_rel(img: Image.Image, pct: float, **kwargs) -> Image.Image:
    """timm's ``translate_y_rel``: a shift by ``pct`` of the height."""
    return _affine_1d(img, 1, 0.0, pct * img.size[1], kwargs)


FAST_OPS = {
    timm_auto_augment.shear_x: shear_x,
    timm_auto_augment.shear_y: shear_y,
    timm_auto_augment.translate_x_rel: translate_x_rel,
    timm_auto_augment.translate_y_rel: translate_y_rel,
}


class DecodeRandomResizedCrop:
    """Encoded image bytes -> a random crop resized to ``size`` (PIL RGB), as timm's
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

    def __call__(self, encoded: tuple[str, torch.Tensor]) -> Image.Image:
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

    def crop(self, image: torch.Tensor) -> Image.Image:
        """A random crop of a decoded uint8 [3, H, W] image, resized to ``size``, as a PIL image."""
        top, left, height, width = RandomResizedCropAndInterpolation.get_params(image, self.scale, self.ratio)
        crop = image[None, :, top : top + height, left : left + width]  # a view: only the crop is resampled
        # torch's uint8 antialiased kernel (what torchvision's resized_crop calls, without its layout copies).
        resized = F.interpolate(
            crop, size=(self.size, self.size), mode=self.interpolation.value, antialias=True
        )
        return Image.fromarray(resized[0].permute(1, 2, 0).numpy())  # (3, S, S) -> (S, S, 3): PIL's layout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, {self.interpolation.value})"


def read_encoded(path: str) -> tuple[str, torch.Tensor]:
    """The file's bytes as a uint8 tensor, with its path for error messages (the fast path's loader)."""
    with open(path, "rb") as f:
        return path, torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def mean_abs_difference(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, in 0..255 levels."""
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())

"""timm's RandAugment image ops as batched tensor kernels: uint8 [n, 3, H, W] in, uint8 out, one argument per image.

Each kernel reproduces the Pillow call timm's op makes (``timm/data/auto_augment.py``), including Pillow's integer
rounding, so that the fast path's RandAugment (drawn in the worker, applied on the device: ``rand_augment.py``)
gives the recipe's pixels. The argument of each image is what timm's level function produced for it (a blend
factor, a threshold, a number of bits, an angle, a shear, a translation). What each kernel follows in Pillow:

* blends (Color, Contrast, Brightness, Sharpness): ``ImageEnhance`` -> ``Image.blend(degenerate, image, factor)``,
  computed in float32 and truncated to uint8 as Pillow's ``Blend.c`` does;
* grey (Color, Contrast's mean): Pillow's ITU-R 601-2 ``L`` conversion in fixed point, ``(19595 R + 38470 G +
  7471 B + 0x8000) >> 16``;
* Sharpness' degenerate: ``ImageFilter.SMOOTH`` (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1 over 13, rounded, the one-pixel
  border left as it is);
* AutoContrast, Equalize, Posterize, Solarize, SolarizeAdd, Invert: the same lookup tables as ``ImageOps`` (Equalize
  and Invert are torchvision's tensor kernels, written to match Pillow's);
* Rotate, ShearX/Y, TranslateX/Y: ``Image.transform(AFFINE)`` maps output pixel centres ``(x + 0.5, y + 0.5)`` through
  the matrix into the input; points outside the input take the fill colour, the rest are sampled with Pillow's
  a = -1 bicubic (or bilinear) and truncated.

Measured against timm's Pillow ops on 64 photo-like 224 crops at magnitude 9 (``benchmarks/data_throughput.py
--stages``), every kernel gives Pillow's pixels but for rare one-level rounding differences (``docs/scaling.md``).
"""

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def _per_image(values: torch.Tensor) -> torch.Tensor:
    """[n] -> [n, 1, 1, 1], to broadcast one value per image over (C, H, W)."""
    return values.view(-1, 1, 1, 1)


def apply_lut(images: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel lookup tables: images uint8 [n, C, H, W], lut uint8 [n, C, 256]."""
    flat = images.flatten(-2).long()  # (n, C, H, W) -> (n, C, H*W)
    return lut.gather(-1, flat).view_as(images)


def grey(images: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L in fixed point: uint8 [n, 3, H, W] -> int32 [n, 1, H, W]."""
    r, g, b = images.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def blend(degenerate: torch.Tensor, images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``Image.blend(degenerate, image, factor)``: ``degenerate + factor * (image - degenerate)`` in float32,
    clipped and truncated to uint8 (Pillow's ``Blend.c``)."""
    degenerate = degenerate.float()
    mixed = degenerate + _per_image(factors.float()) * (images.float() - degenerate)
    return mixed.clamp_(0, 255).to(torch.uint8)  # float -> uint8 truncates, as Pillow's (UINT8) cast


def color(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Color``: blend with the grey image."""
    return blend(grey(images).expand_as(images), images, factors)


def contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast``: blend with a flat image at the grey mean, rounded to a level."""
    levels = grey(images).flatten(1)  # (n, H*W)
    mean = (levels.sum(1, dtype=torch.int64).double() / levels.shape[1] + 0.5).floor()  # int(mean + 0.5)
    return blend(_per_image(mean).expand_as(images), images, factors)


def brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return blend(torch.zeros_like(images), images, factors)


def sharpness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Sharpness``: blend with ``ImageFilter.SMOOTH`` of the image (border pixels unfiltered)."""
    kernel = torch.ones(3, 3, device=images.device)  # made on the device: no host copy, no sync
    kernel[1, 1] = 5.0
    kernel /= 13
    channels = images.shape[1]
    smooth = F.conv2d(images.float(), kernel.expand(channels, 1, 3, 3), groups=channels)  # (n, C, H-2, W-2)
    degenerate = images.clone()
    degenerate[..., 1:-1, 1:-1] = smooth.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)  # Pillow's clip8
    return blend(degenerate, images, factors)


def auto_contrast(images: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast``: each channel's [lo, hi] stretched to [0, 255] by Pillow's float64 table
    ``int(i * scale + offset)``, ``scale = 255 / (hi - lo)``, ``offset = -lo * scale`` (a flat channel is kept)."""
    lo = images.amin(dim=(-2, -1)).double()[..., None]  # (n, C, 1)
    hi = images.amax(dim=(-2, -1)).double()[..., None]
    levels = torch.arange(256, dtype=torch.float64, device=images.device)
    # tensor / tensor: torch computes 255.0 / tensor as 255 * (1 / tensor), a rounding away from Python's scale.
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)
    offset = -lo * scale
    stretched = (levels * scale + offset).trunc_().clamp_(0, 255)  # two roundings, as Python's float ops
    lut = torch.where(hi > lo, stretched, levels).to(torch.uint8)
    return apply_lut(images, lut)


def equalize(images: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize`` (torchvision's batched kernel, Pillow's table)."""
    return TF.equalize(images)


def invert(images: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return TF.invert(images)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` bits of each level (0 bits: black, 8 or more: unchanged)."""
    keep = bits.long().clamp(0, 8)
    masks = ((0xFF << (8 - keep)) & 0xFF).to(torch.uint8)
    return images & _per_image(masks)


def solarize(images: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Invert every level at or above the image's threshold (256: none)."""
    return torch.where(images >= _per_image(thresholds), 255 - images, images)


def solarize_add(images: torch.Tensor, adds: torch.Tensor, threshold: int = 128) -> torch.Tensor:
    """Add the image's ``add`` (capped at 255) to every level below ``threshold`` (timm's default 128)."""
    brighter = (images.int() + _per_image(adds.int())).clamp_(max=255).to(torch.uint8)
    return torch.where(images < threshold, brighter, images)


def _cubic(v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, v4: torch.Tensor, d: torch.Tensor):
    """Pillow's ``BICUBIC`` macro (``Geometry.c``): the a = -1 cubic through four taps at fraction ``d``."""
    p2 = v3 - v1
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = v2 - v1 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def _linear(v1: torch.Tensor, v2: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Pillow's ``BILINEAR`` macro."""
    return v1 + (v2 - v1) * d


def sample(
    images: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    mode: str,
    along_x: bool = True,
    along_y: bool = True,
) -> torch.Tensor:
    """Pillow's affine-transform filters at input points ``(u, v)`` (pixel edges at integers): float32 [n, C, H, W].

    Written here rather than with ``grid_sample``, whose bicubic is the a = -0.75 cubic (0.3-0.5 of 255 mean abs
    difference to Pillow's on photos): the taps are gathered and combined with Pillow's own formulas, which keep a
    flat region exactly flat, neighbours outside the image clamped to its edge (``XCLIP``/``YCLIP``). Coordinates
    are float64 as in Pillow, the taps float32 (a one-level truncation difference for ~1e-4 of the pixels).
    ``along_x=False`` (``along_y=False``) says every ``u`` (``v``) is a pixel centre, as for a shear or translation
    along the other axis: Pillow's formula then gives the centre tap exactly, and only that one is gathered.
    """
    n, channels, height, width = images.shape
    x, y = u - 0.5, v - 0.5  # (n, H, W), tap centres
    x0, y0 = x.floor(), y.floor()
    dx = (x - x0).flatten(1).unsqueeze(1).float()  # (n, 1, H*W)
    dy = (y - y0).flatten(1).unsqueeze(1).float()
    offsets = (-1, 0, 1, 2) if mode == "bicubic" else (0, 1)
    combine = _cubic if mode == "bicubic" else _linear
    x_offsets = offsets if along_x else (0,)
    y_offsets = offsets if along_y else (0,)
    columns = [(x0 + k).long().clamp_(0, width - 1).flatten(1) for k in x_offsets]
    flat = images.flatten(2).float()  # (n, C, H*W)
    rows = []
    for k in y_offsets:
        row = (y0 + k).long().clamp_(0, height - 1).flatten(1) * width
        taps = [flat.gather(2, (row + column).unsqueeze(1).expand(-1, channels, -1)) for column in columns]
        rows.append(combine(*taps, dx) if len(taps) > 1 else taps[0])
    return (combine(*rows, dy) if len(rows) > 1 else rows[0]).view(n, channels, height, width)


def affine(
    images: torch.Tensor,
    matrices: torch.Tensor,
    fill: torch.Tensor,
    mode: str,
    along_x: bool = True,
    along_y: bool = True,
) -> torch.Tensor:
    """``Image.transform(size, AFFINE, (a, b, c, d, e, f), resample, fillcolor=fill)`` for each image.

    Args:
        images: uint8 [n, C, H, W].
        matrices: float64 [n, 6], output -> input: ``u = a x + b y + c``, ``v = d x + e y + f`` at pixel centres.
        fill: uint8 [C], the colour of points outside the input.
        mode: ``bicubic`` or ``bilinear``.
        along_x: whether the matrices can move points off the pixel centres along x (see :func:`sample`).
        along_y: the same along y.
    """
    n, channels, height, width = images.shape
    ys = torch.arange(height, dtype=torch.float64, device=images.device).add_(0.5).view(1, -1, 1)
    xs = torch.arange(width, dtype=torch.float64, device=images.device).add_(0.5).view(1, 1, -1)
    a, b, c, d, e, f = (m.view(n, 1, 1) for m in matrices.unbind(1))
    u, v = a * xs + b * ys + c, d * xs + e * ys + f  # (n, H, W) input coordinates
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    sampled = (
        sample(images, u, v, mode, along_x, along_y).clamp_(0, 255).to(torch.uint8)
    )  # Pillow clips and truncates
    return torch.where(inside.unsqueeze(1), sampled, fill.view(1, channels, 1, 1))


def _translation(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    one, zero = torch.ones_like(dx), torch.zeros_like(dx)
    return torch.stack((one, zero, dx, zero, one, dy), dim=1)


def shear_x_matrix(factors: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    one, zero = torch.ones_like(factors), torch.zeros_like(factors)
    return torch.stack((one, factors, zero, zero, one, zero), dim=1)  # timm: (1, factor, 0, 0, 1, 0)


def shear_y_matrix(factors: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    one, zero = torch.ones_like(factors), torch.zeros_like(factors)
    return torch.stack((one, zero, zero, factors, one, zero), dim=1)  # timm: (1, 0, 0, factor, 1, 0)


def translate_x_rel_matrix(fractions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return _translation(fractions * size[1], torch.zeros_like(fractions))  # pct * width


def translate_y_rel_matrix(fractions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return _translation(torch.zeros_like(fractions), fractions * size[0])  # pct * height


def translate_x_abs_matrix(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return _translation(pixels, torch.zeros_like(pixels))


def translate_y_abs_matrix(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return _translation(torch.zeros_like(pixels), pixels)


def rotate_matrix(degrees: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``Image.rotate(degrees)``'s inverse matrix about the centre ``(w / 2, h / 2)``, as Pillow builds it (the
    sines and cosines rounded to 15 decimals)."""
    height, width = size
    angle = -torch.deg2rad(degrees % 360.0)
    cos = torch.round(torch.cos(angle), decimals=15)
    sin = torch.round(torch.sin(angle), decimals=15)
    cx, cy = width / 2, height / 2
    c = cos * -cx + sin * -cy + cx  # Pillow: (a, b, c) applied to (-cx, -cy), then + centre
    f = -sin * -cx + cos * -cy + cy
    return torch.stack((cos, sin, c, -sin, cos, f), dim=1)


# name -> (matrix of the op's arguments, whether it moves points off pixel centres along x, along y)
GEOMETRIC = {
    "rotate": (rotate_matrix, True, True),
    "shear_x": (shear_x_matrix, True, False),
    "shear_y": (shear_y_matrix, False, True),
    "translate_x_rel": (translate_x_rel_matrix, True, False),
    "translate_y_rel": (translate_y_rel_matrix, False, True),
    "translate_x_abs": (translate_x_abs_matrix, True, False),
    "translate_y_abs": (translate_y_abs_matrix, False, True),
}
PIXELWISE = {
    "auto_contrast": auto_contrast,
    "equalize": equalize,
    "invert": invert,
    "posterize": posterize,
    "solarize": solarize,
    "solarize_add": solarize_add,
    "color": color,
    "contrast": contrast,
    "brightness": brightness,
    "sharpness": sharpness,
}

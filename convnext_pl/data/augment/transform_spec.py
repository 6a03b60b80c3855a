"""An evaluation transform as JSON, and back: what an exported model carries so it preprocesses as its run did.

The classification data modules build their evaluation transforms from five deterministic torchvision steps
(timm's ``create_transform(is_training=False)`` included): grayscale, resize, center crop, to-tensor and
normalise. :func:`describe_transform` writes such a ``Compose`` as a list of plain dicts, :func:`build_transform`
rebuilds the same ``Compose`` from it, so an ONNX export's ``predict`` gives the pixels ``main.py predict`` gives.
Anything else (a random step, a custom callable) is refused: it could not be rebuilt faithfully.
"""

from collections.abc import Sequence

import torch
import torchvision.transforms as T
from timm.data.transforms import MaybeToTensor
from torchvision.transforms import InterpolationMode


def _floats(values: Sequence[float] | torch.Tensor) -> list[float]:
    return [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]


def _size(size: int | Sequence[int]) -> int | list[int]:
    """torchvision's size argument: an int (the shorter side) or (height, width)."""
    return size if isinstance(size, int) else [int(s) for s in size]


def describe_step(step) -> dict:
    """One transform step as a JSON-ready dict (``{"op": ..., <its arguments>}``).

    Raises:
        ValueError: a step other than Grayscale, Resize, CenterCrop, ToTensor/MaybeToTensor and Normalize.
    """
    if isinstance(step, T.Grayscale):
        return {"op": "grayscale", "num_output_channels": step.num_output_channels}
    if isinstance(step, T.Resize):
        return {"op": "resize", "size": _size(step.size), "interpolation": step.interpolation.value,
                "max_size": step.max_size, "antialias": step.antialias}  # fmt: skip
    if isinstance(step, T.CenterCrop):
        return {"op": "center_crop", "size": _size(step.size)}
    if isinstance(step, (T.ToTensor, MaybeToTensor)):  # MaybeToTensor is ToTensor on a PIL image
        return {"op": "to_tensor"}
    if isinstance(step, T.Normalize):
        return {"op": "normalize", "mean": _floats(step.mean), "std": _floats(step.std)}
    raise ValueError(
        f"cannot describe the transform step {step!r}; only deterministic evaluation steps travel"
    )


def describe_transform(transform: T.Compose) -> list[dict]:
    """The steps of an evaluation ``Compose`` as JSON-ready dicts; :func:`build_transform` inverts it."""
    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    return [describe_step(step) for step in steps]


def build_transform(steps: Sequence[dict]) -> T.Compose:
    """The ``Compose`` that :func:`describe_transform` described (PIL RGB image -> FloatTensor[C, H, W]).

    Raises:
        ValueError: an unknown ``op`` or missing arguments.
    """
    built = []
    for step in steps:
        op, args = step.get("op"), {k: v for k, v in step.items() if k != "op"}
        try:
            if op == "grayscale":
                built.append(T.Grayscale(**args))
            elif op == "resize":
                interpolation = InterpolationMode(args.pop("interpolation"))
                built.append(T.Resize(interpolation=interpolation, **args))
            elif op == "center_crop":
                built.append(T.CenterCrop(**args))
            elif op == "to_tensor":
                built.append(T.ToTensor())
            elif op == "normalize":
                built.append(T.Normalize(**args))
            else:
                raise ValueError(f"unknown transform op {op!r}")
        except (TypeError, KeyError) as err:
            raise ValueError(f"transform step {step} has wrong arguments ({err})") from err
    return T.Compose(built)

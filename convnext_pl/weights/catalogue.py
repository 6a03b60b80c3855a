"""The released ConvNeXt weights, as data: one ``Weights`` entry per released file.

Names follow one scheme, ``<model>.<training>[_<resolution>]``: the ``create_model`` name, then what the file was
trained on (``in1k``, ``in22k``, ``in22k_ft_in1k``, ``fcmae``, ``fcmae_ft_in1k``, ``fcmae_ft_in22k_in1k``; timm's
own trainings keep timm's tags ``d2_in1k``, ``d1_in1k``, ``d1h_in1k``) and the resolution when it is not 224.

Sources (docs/paper.md §1, §2, §4):
- ConvNeXt V1: the official README of facebookresearch/ConvNeXt ("Results and Pre-trained Models"), files under
  https://dl.fbaipublicfiles.com/convnext/. Its top-1 figures are single-crop ImageNet-1K validation accuracy.
- ConvNeXt V2: the official README of facebookresearch/ConvNeXt-V2, files under .../convnext/convnextv2/.
- timm's small variants (atto..nano): the timm README figures at 224 (docs/paper.md §1), files on the Hub.
- ``hf_hub_id``: timm's copy of the same weights (timm names; ``load_pretrained`` renames them). The evaluation
  settings (image size, crop) are timm's ``pretrained_cfgs`` of ``timm/models/convnext.py``, which match the
  official ``build_transform``: crop 0.875 below 384, squash (resize to the square, no crop) at 384 and above.

Adding a released file is adding one entry. Dense-prediction files (UperNet on ADE20K, Mask R-CNN on COCO) use
``task`` and an ``arch`` whose ``factory`` builds the whole network, e.g.::

    Weights(
        name="upernet_convnext_tiny.ade20k_160k", task="segmentation",
        arch=Arch("convnext_pl.models.upernet.create_upernet", {"backbone": "convnext_tiny", "num_classes": 150}),
        num_classes=150, label_set="ade20k", image_size=512, crop_pct=1.0,
        recipe="UperNet 160k iterations, crop 512 (docs/paper.md §6)",
        reported={"mIoU": 46.0}, reported_at="single scale, 2048x512",
        url="https://dl.fbaipublicfiles.com/convnext/ade20k/upernet_convnext_tiny_1k_512x512.pth",
        source="facebookresearch/ConvNeXt semantic_segmentation/README.md",
    )
"""

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch.nn as nn

from convnext_pl.errors import UserError

OFFICIAL = "https://dl.fbaipublicfiles.com/convnext"
V1_SOURCE = "facebookresearch/ConvNeXt README.md"
V2_SOURCE = "facebookresearch/ConvNeXt-V2 README.md"
TIMM_SOURCE = "timm README (docs/paper.md §1)"
TIMM_RELEASES = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights"

IN1K_CLASSES = 1000
IN22K_CLASSES = 21841  # the ImageNet-22K files' head (docs/paper.md §2, "Official checkpoint format")
CREATE_MODEL = "convnext_pl.models.create_model"


@dataclass(frozen=True)
class Arch:
    """How to build the network a file fits: ``factory(**kwargs)``, the factory named by its import path."""

    factory: str
    kwargs: Mapping[str, object] = field(default_factory=dict)

    def build(self, **overrides) -> nn.Module:
        """Build the network (``overrides`` replace kwargs, e.g. ``drop_path_rate``)."""
        module_name, _, attr = self.factory.rpartition(".")
        return getattr(importlib.import_module(module_name), attr)(**{**self.kwargs, **overrides})


@dataclass(frozen=True)
class Weights:
    """One released weights file.

    Args:
        name: the short name users pass (``--model.init_args.pretrained convnext_tiny.in1k``).
        task: ``classification``, ``segmentation`` or ``detection``.
        arch: the network the file fits.
        num_classes: outputs of the file's head (0: no head, a pre-training-only file).
        label_set: ``imagenet-1k``, ``imagenet-22k`` (21,841 classes), ``none``, or a dense data set's name.
        image_size: the resolution the file was trained at and is evaluated at.
        crop_pct: evaluation crop fraction (0.875 below 384; 1.0 with ``crop_mode`` squash at 384 and above).
        crop_mode: ``center`` (resize the shorter side to image_size / crop_pct, center crop) or ``squash``.
        recipe: how the weights were trained, in a few words, with the section of docs/paper.md.
        reported: the figures the source reports (``{"top1": 82.1}``; ``{"mIoU": ...}`` for segmentation).
        reported_at: the evaluation those figures come from.
        url: the official download (None when the file is only on the Hub).
        hf_hub_id: the Hugging Face Hub repository holding the same weights (timm's layout).
        sha256: the SHA-256 of the ``url`` file, checked after its download when known (the Hub gives its own).
        source: where the entry's facts come from.
        note: anything a user should know (a disagreement between sources, say).
    """

    name: str
    task: str
    arch: Arch
    num_classes: int
    label_set: str
    image_size: int
    recipe: str
    source: str
    crop_pct: float = 0.875
    crop_mode: str = "center"
    reported: Mapping[str, float] = field(default_factory=dict)
    reported_at: str = ""
    url: str | None = None
    hf_hub_id: str | None = None
    sha256: str | None = None
    note: str = ""

    @property
    def family(self) -> str:
        """The catalogue's grouping for listings: the part of the name before the first size word."""
        model = self.name.split(".")[0]
        for prefix in ("convnextv2", "convnext_iso", "upernet", "mask_rcnn", "cascade_mask_rcnn"):
            if model.startswith(prefix):
                return prefix
        return "convnext"

    def build(self, **overrides) -> nn.Module:
        """The network this file fits, freshly initialised."""
        return self.arch.build(**overrides)


def _eval(image_size: int) -> dict:
    # Official build_transform / timm pretrained_cfgs: crop 0.875 below 384, squash without crop at 384 and above.
    return {"crop_pct": 1.0, "crop_mode": "squash"} if image_size >= 384 else {"crop_pct": 0.875}


def _classifier(
    name, model, num_classes, label_set, size, recipe, source, top1, url, hub, **extra
) -> Weights:
    crop = extra.get("crop_pct", 0.875)
    at = f"ImageNet-1K val, {size}x{size}, " + ("squash, no crop" if size >= 384 else f"crop {crop}")
    return Weights(
        name=name,
        task="classification",
        arch=Arch(CREATE_MODEL, {"name": model, "num_classes": num_classes}),
        num_classes=num_classes,
        label_set=label_set,
        image_size=size,
        recipe=recipe,
        source=source,
        reported=MappingProxyType({"top1": top1}) if top1 is not None else MappingProxyType({}),
        reported_at=at if top1 is not None else "",
        url=url,
        hf_hub_id=hub,
        **{**_eval(size), **extra},
    )


def _v1_entries() -> Iterator[Weights]:
    in1k = "ImageNet-1K, 300 epochs, EMA weights (docs/paper.md §4)"
    for size, top1 in {"tiny": 82.1, "small": 83.1, "base": 83.8, "large": 84.3}.items():
        yield _classifier(f"convnext_{size}.in1k", f"convnext_{size}", IN1K_CLASSES, "imagenet-1k", 224, in1k,
                          V1_SOURCE, top1, f"{OFFICIAL}/convnext_{size}_1k_224_ema.pth",
                          f"timm/convnext_{size}.fb_in1k")  # fmt: skip
    for size, top1 in {"base": 85.1, "large": 85.5}.items():
        yield _classifier(f"convnext_{size}.in1k_384", f"convnext_{size}", IN1K_CLASSES, "imagenet-1k", 384,
                          "ImageNet-1K 224 -> 384 fine-tuning, 30 epochs (docs/paper.md §4)", V1_SOURCE, top1,
                          f"{OFFICIAL}/convnext_{size}_1k_384.pth", None)  # fmt: skip
    in22k_top1 = {"tiny": (82.9, 84.1), "small": (84.6, 85.8), "base": (85.8, 86.8), "large": (86.6, 87.5),
                  "xlarge": (87.0, 87.8)}  # fmt: skip
    for size, (top1_224, top1_384) in in22k_top1.items():
        model = f"convnext_{size}"
        yield _classifier(f"{model}.in22k", model, IN22K_CLASSES, "imagenet-22k", 224,
                          "ImageNet-22K, 90 epochs, no EMA (docs/paper.md §4)", V1_SOURCE, None,
                          f"{OFFICIAL}/{model}_22k_224.pth", f"timm/{model}.fb_in22k",
                          note="21,841-class head: fine-tune it (imagenet22k_to_1k_finetune.yaml)")  # fmt: skip
        ema = "_ema" if size == "xlarge" else ""  # fine-tuning kept EMA only for XL (docs/paper.md §4)
        fine_tuned = "ImageNet-22K -> 1K fine-tuning, 30 epochs (docs/paper.md §4)"
        yield _classifier(f"{model}.in22k_ft_in1k", model, IN1K_CLASSES, "imagenet-1k", 224, fine_tuned,
                          V1_SOURCE, top1_224, f"{OFFICIAL}/{model}_22k_1k_224{ema}.pth",
                          f"timm/{model}.fb_in22k_ft_in1k")  # fmt: skip
        yield _classifier(f"{model}.in22k_ft_in1k_384", model, IN1K_CLASSES, "imagenet-1k", 384,
                          fine_tuned.replace("fine-tuning", "fine-tuning at 384"), V1_SOURCE, top1_384,
                          f"{OFFICIAL}/{model}_22k_1k_384{ema}.pth", f"timm/{model}.fb_in22k_ft_in1k_384")  # fmt: skip
    for size, top1 in {"small": 78.7, "base": 82.0, "large": 82.6}.items():
        note = "the paper's Table 3 reports 79.7 for isotropic S; the README 78.7" if size == "small" else ""
        yield _classifier(f"convnext_iso_{size}.in1k", f"convnext_iso_{size}", IN1K_CLASSES, "imagenet-1k", 224,
                          "isotropic, ImageNet-1K, 300 epochs, EMA weights (docs/paper.md §1)", V1_SOURCE, top1,
                          f"{OFFICIAL}/convnext_iso_{size}_1k_224_ema.pth", None, note=note)  # fmt: skip


V2_SIZES = ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")


def _v2_entries() -> Iterator[Weights]:
    v2 = f"{OFFICIAL}/convnextv2"
    for size in V2_SIZES:
        model = f"convnextv2_{size}"
        yield _classifier(f"{model}.fcmae", model, 0, "none", 224,
                          "FCMAE self-supervised pre-training on ImageNet-1K, no head (ConvNeXt V2 Sec. 3)",
                          V2_SOURCE, None, f"{v2}/pt_only/{model}_1k_224_fcmae.pt", f"timm/{model}.fcmae",
                          note="no head: fine-tune it (the final norm and head start fresh) or go on pre-training it "
                               "(MaskedAutoencoderPretrainer; the official file holds the decoder too)")  # fmt: skip
    in1k_top1 = {"atto": 76.7, "femto": 78.5, "pico": 80.3, "nano": 81.9, "tiny": 83.0, "base": 84.9,
                 "large": 85.8, "huge": 86.3}  # fmt: skip
    for size, top1 in in1k_top1.items():
        model = f"convnextv2_{size}"
        yield _classifier(f"{model}.fcmae_ft_in1k", model, IN1K_CLASSES, "imagenet-1k", 224,
                          "FCMAE pre-training, then ImageNet-1K fine-tuning, EMA weights", V2_SOURCE, top1,
                          f"{v2}/im1k/{model}_1k_224_ema.pt", f"timm/{model}.fcmae_ft_in1k")  # fmt: skip
    in22k_top1 = {("nano", 224): 82.1, ("nano", 384): 83.4, ("tiny", 224): 83.9, ("tiny", 384): 85.1,
                  ("base", 224): 86.8, ("base", 384): 87.7, ("large", 224): 87.3, ("large", 384): 88.2,
                  ("huge", 384): 88.7, ("huge", 512): 88.9}  # fmt: skip
    for (size, res), top1 in in22k_top1.items():
        model, suffix = f"convnextv2_{size}", "" if res == 224 else f"_{res}"
        yield _classifier(f"{model}.fcmae_ft_in22k_in1k{suffix}", model, IN1K_CLASSES, "imagenet-1k", res,
                          "FCMAE pre-training, ImageNet-22K then ImageNet-1K fine-tuning, EMA weights", V2_SOURCE,
                          top1, f"{v2}/im22k/{model}_22k_{res}_ema.pt",
                          f"timm/{model}.fcmae_ft_in22k_in1k{suffix}")  # fmt: skip


def _timm_entries() -> Iterator[Weights]:
    # timm's own trainings of the small variants (timm's tags kept: d2/d1/d1h name the recipe variant).
    # The URL's "-<hex>." is the start of the file's SHA-256 (torch.hub's convention), checked after download.
    # crop_pct: timm's pretrained_cfgs (0.95 for nano d1h, timm's evaluation of that file).
    trainings = {"atto": ("d2", "01bb0f51", 75.7, 0.875), "femto": ("d1", "d71d5b4c", 77.5, 0.875),
                 "pico": ("d1", "10ad7f0d", 79.5, 0.875), "nano": ("d1h", "7eb4bdea", 80.8, 0.95)}  # fmt: skip
    for size, (tag, hash_prefix, top1, crop_pct) in trainings.items():
        model = f"convnext_{size}"
        yield _classifier(f"{model}.{tag}_in1k", model, IN1K_CLASSES, "imagenet-1k", 224,
                          f"timm ImageNet-1K recipe '{tag}' (timm's RSB-style training)", TIMM_SOURCE, top1,
                          f"{TIMM_RELEASES}/{model}_{tag}-{hash_prefix}.pth", f"timm/{model}.{tag}_in1k",
                          crop_pct=crop_pct)  # fmt: skip


def _segmentation_entries() -> Iterator[Weights]:
    # UperNet on ADE20K (docs/paper.md §6), facebookresearch/ConvNeXt semantic_segmentation/README.md: mIoU single
    # scale (ms+flip where the table gives it), 160k iterations; 1K backbones at crop 512, 22K ones at crop 640.
    rows = {("tiny", "1k", 512): (46.0, 46.7), ("small", "1k", 512): (48.7, 49.6), ("base", "1k", 512): (49.1, 49.9),
            ("base", "22k", 640): (52.6, None), ("large", "22k", 640): (53.2, None),
            ("xlarge", "22k", 640): (53.6, None)}  # fmt: skip
    for (size, pretraining, crop), (miou, miou_ms) in rows.items():
        reported = {"mIoU": miou} | ({"mIoU_ms_flip": miou_ms} if miou_ms is not None else {})
        yield Weights(
            name=f"upernet_convnext_{size}.ade20k_160k" + ("" if pretraining == "1k" else "_in22k_640"),
            task="segmentation",
            arch=Arch(
                "convnext_pl.models.upernet.create_upernet",
                {"backbone": f"convnext_{size}", "num_classes": 150},
            ),
            num_classes=150,
            label_set="ade20k",
            image_size=crop,
            crop_pct=1.0,
            recipe=f"UperNet 160k iterations, batch 16, crop {crop}, from ImageNet-{pretraining.upper()} (docs/paper.md §6)",
            reported=MappingProxyType(reported),
            reported_at=f"ADE20K val, sliding window, {crop * 4}x{crop} (ms+flip: 6 scales with flips)",
            url=f"{OFFICIAL}/ade20k/upernet_convnext_{size}_{pretraining}_{crop}x{crop}.pth",
            source="facebookresearch/ConvNeXt semantic_segmentation/README.md",
        )


def _detection_entries() -> Iterator[Weights]:
    # Mask R-CNN on COCO (docs/paper.md §6), facebookresearch/ConvNeXt object_detection/README.md. The README's
    # Cascade Mask R-CNN files need a cascade head this project does not build, so they are not listed.
    yield Weights(
        name="mask_rcnn_convnext_tiny.coco_3x",
        task="detection",
        arch=Arch(
            "convnext_pl.models.mask_rcnn.create_mask_rcnn", {"backbone": "convnext_tiny", "num_classes": 80}
        ),
        num_classes=80,
        label_set="coco",
        image_size=800,
        crop_pct=1.0,
        recipe="Mask R-CNN 3x (36 epochs), multi-scale 480-800, AdamW, from ImageNet-1K (docs/paper.md §6)",
        reported=MappingProxyType({"box_AP": 46.2, "mask_AP": 41.7}),
        reported_at="COCO val2017, single scale, shorter side 800 (long side <= 1333)",
        url=f"{OFFICIAL}/coco/mask_rcnn_convnext_tiny_1k_3x.pth",
        source="facebookresearch/ConvNeXt object_detection/README.md",
        note="mmdet 2.x layout: load_detection_checkpoint converts it (docs/detection.md)",
    )


CATALOGUE: dict[str, Weights] = {
    w.name: w
    for w in (
        *_v1_entries(),
        *_v2_entries(),
        *_timm_entries(),
        *_segmentation_entries(),
        *_detection_entries(),
    )
}


def register_weights(weights: Weights) -> None:
    """Add an entry (another task's released file); names must be unique."""
    if weights.name in CATALOGUE:
        raise ValueError(f"weights name '{weights.name}' is already in the catalogue")
    CATALOGUE[weights.name] = weights


def get_weights(name: str) -> Weights:
    """The entry called ``name``.

    Raises:
        UserError: for a name not in the catalogue (the message suggests the closest names).
    """
    if name in CATALOGUE:
        return CATALOGUE[name]
    model = name.split(".")[0]
    close = [n for n in CATALOGUE if n.split(".")[0] == model] or sorted(CATALOGUE)[:5]
    raise UserError(
        f"'{name}' is not a released weights name; known names for it include {', '.join(close[:8])} "
        "(all: python -m convnext_pl.weights list)."
    )


def list_weights(filter: str | None = None, task: str | None = None) -> list[Weights]:
    """Entries whose name contains ``filter`` (case-insensitive) and whose task is ``task``, in catalogue order."""
    text = (filter or "").lower()
    return [w for w in CATALOGUE.values() if text in w.name.lower() and (task is None or w.task == task)]

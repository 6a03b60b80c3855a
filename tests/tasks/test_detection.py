"""Mask R-CNN with a ConvNeXt backbone: forward/backward, size figures, the mmdet key map, layer ids.

Small detectors throughout (convnext_atto, 64-px images, narrow heads) except where the figure is about the
official ConvNeXt-T detector, which is then built on the meta device.
"""

import json
from pathlib import Path

import pytest
import torch
from helpers import run_python

from convnext_pl.errors import UserError
from convnext_pl.models.backbone import create_backbone
from convnext_pl.models.flops import count_macs
from convnext_pl.models.layer_ids import detector_layer_ids
from convnext_pl.models.mask_rcnn import count_detector_macs, create_mask_rcnn
from convnext_pl.training.optim import build_optimizer
from convnext_pl.weights.conversions import mmdet_mask_rcnn_to_torchvision, torchvision_mask_rcnn_to_mmdet
from convnext_pl.weights.dense import load_detection_checkpoint

# A CPU-sized detector: the official structure with narrow heads and few RoIs.
SMALL = dict(
    backbone="convnext_atto",
    num_classes=3,
    min_size=64,
    max_size=96,
    fpn_channels=32,
    representation_size=64,
    rpn_post_nms_top_n_train=64,
    rpn_post_nms_top_n_test=32,
    box_batch_size_per_image=32,
    box_detections_per_img=10,
)


def small_detector(**overrides):
    return create_mask_rcnn(**{**SMALL, **overrides})


def targets_for(sizes, masks=True):
    """One box (with its mask) per image, of label 1..3."""
    targets = []
    for i, (h, w) in enumerate(sizes):
        box = torch.tensor([[w * 0.2, h * 0.25, w * 0.7, h * 0.8]])
        target = {"boxes": box, "labels": torch.tensor([1 + i % 3])}
        if masks:
            mask = torch.zeros(1, h, w, dtype=torch.uint8)
            x0, y0, x1, y1 = box[0].int().tolist()
            mask[0, y0:y1, x0:x1] = 1
            target["masks"] = mask
        targets.append(target)
    return targets


@pytest.mark.parametrize("masks", [True, False], ids=["mask_rcnn", "faster_rcnn"])
def test_train_mode_gives_losses_and_every_parameter_a_gradient(masks):
    model = small_detector(masks=masks)
    sizes = [(64, 80), (72, 64)]  # different sizes: the model pads them into one batch
    images = [torch.rand(3, h, w) for h, w in sizes]
    losses = model(images, targets_for(sizes, masks))
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected | ({"loss_mask"} if masks else set())
    sum(losses.values()).backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_eval_mode_gives_detections_in_input_coordinates():
    model = small_detector().eval()
    images = [torch.rand(3, 50, 70), torch.rand(3, 80, 60)]
    with torch.no_grad():
        outputs = model(images)
    for image, out in zip(images, outputs, strict=True):
        n = len(out["boxes"])
        assert 0 < n <= SMALL["box_detections_per_img"]
        assert out["masks"].shape == (n, 1, *image.shape[1:])  # pasted back at the input's size
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3  # 0 is the background
        assert (out["boxes"][:, 2] <= image.shape[2]).all() and (out["boxes"][:, 3] <= image.shape[1]).all()


def test_any_variant_is_a_backbone():
    model = small_detector(backbone="convnextv2_atto")
    assert model.backbone.body.out_channels == [40, 80, 160, 320]


def test_official_tiny_detector_parameters():
    # ConvNeXt-T Mask R-CNN, 80 classes: the paper's table says 48M. torchvision's heads hold a background box
    # regressor (4 x 1025) and background mask logits (257) that mmdet's do not, so mmdet's count is 4,357 less.
    with torch.device("meta"):
        model = create_mask_rcnn("convnext_tiny", num_classes=80)
        faster = create_mask_rcnn("convnext_tiny", num_classes=80, masks=False)
    assert sum(p.numel() for p in model.parameters()) == 48_099_733
    assert sum(p.numel() for p in faster.parameters()) == 45_456_196


def test_macs_are_the_backbone_fpn_and_heads_counted_like_mmdet():
    # count_detector_macs = backbone + FPN + RPN head on all levels + box head on 1000 RoIs + mask head on 100.
    model = small_detector()
    h, w = 64, 96
    c, r, k = SMALL["fpn_channels"], SMALL["representation_size"], SMALL["num_classes"] + 1
    levels = [(h // s) * (w // s) for s in (4, 8, 16, 32)]
    pixels = sum(levels) + (h // 32 + 1) // 2 * ((w // 32 + 1) // 2)  # P6: P5 (2x3) max-pooled, stride 2
    rpn = pixels * (c * c * 9 + c * 3 + c * 12)  # 3x3 conv, 3 objectness logits, 12 deltas per position
    box = 1000 * (c * 49 * r + r * r + r * k + r * 4 * k)
    mask = 100 * (4 * 196 * c * c * 9 + 196 * c * c * 4 + 784 * c * k)
    assert count_detector_macs(model, h, w) == count_macs(model.backbone, (h, w)) + rpn + box + mask


# ------------------------------------------------------------------------------------- mmdet checkpoint layout
def mmdet_state_dict(backbone: str, num_classes: int, c: int = 32, r: int = 64) -> dict[str, torch.Tensor]:
    """Random weights under the names and shapes of an mmdet 2.x Mask R-CNN (written from mmdet's heads, not
    from the key map): FPN ``ConvModule``s, ``RPNHead``, ``Shared2FCBBoxHead``, ``FCNMaskHead``."""
    # Random but tame values (the initial ones plus noise, heads at std 0.02), so that a forward stays finite.
    state = {
        f"backbone.{k}": v + 0.02 * torch.randn_like(v)
        for k, v in create_backbone(backbone).state_dict().items()
    }
    widths = [40, 80, 160, 320]
    for i, width in enumerate(widths):
        state |= {
            f"neck.lateral_convs.{i}.conv.weight": torch.randn(c, width, 1, 1),
            f"neck.lateral_convs.{i}.conv.bias": torch.randn(c),
        }
        state |= {
            f"neck.fpn_convs.{i}.conv.weight": torch.randn(c, c, 3, 3),
            f"neck.fpn_convs.{i}.conv.bias": torch.randn(c),
        }
    shapes = {
        "rpn_head.rpn_conv": (c, c, 3, 3),
        "rpn_head.rpn_cls": (3, c, 1, 1),  # sigmoid: one logit per anchor
        "rpn_head.rpn_reg": (12, c, 1, 1),
        "roi_head.bbox_head.shared_fcs.0": (r, c * 49),
        "roi_head.bbox_head.shared_fcs.1": (r, r),
        "roi_head.bbox_head.fc_cls": (num_classes + 1, r),  # K classes, then the background
        "roi_head.bbox_head.fc_reg": (4 * num_classes, r),  # class-specific, no background
        **{f"roi_head.mask_head.convs.{i}.conv": (c, c, 3, 3) for i in range(4)},
        "roi_head.mask_head.upsample": (c, c, 2, 2),
        "roi_head.mask_head.conv_logits": (num_classes, c, 1, 1),
    }
    for name, shape in shapes.items():
        state[f"{name}.weight"] = 0.02 * torch.randn(shape)
        state[f"{name}.bias"] = 0.02 * torch.randn(shape[0])
    return state


def test_mmdet_layout_loads_without_missing_or_unexpected_keys_and_converts_back():
    mmdet = mmdet_state_dict("convnext_atto", num_classes=3)
    model = small_detector()
    converted = mmdet_mask_rcnn_to_torchvision(mmdet)
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    back = torchvision_mask_rcnn_to_mmdet(model.state_dict())
    assert back.keys() == mmdet.keys()
    assert all(torch.equal(back[k], mmdet[k]) for k in mmdet)


@pytest.mark.parametrize("k", [0, 2])
def test_class_order_a_classifier_preferring_mmdet_class_k_predicts_label_k_plus_1(k, tmp_path):
    # mmdet index k (of 0..K-1, background K) is torchvision label k + 1 (background 0): the category of
    # the data's label k + 1. Zero regressors keep the proposals; the mask logits of class k are positive.
    mmdet = mmdet_state_dict("convnext_atto", num_classes=3)
    for name in ("fc_cls", "fc_reg"):
        mmdet[f"roi_head.bbox_head.{name}.weight"].zero_()
        mmdet[f"roi_head.bbox_head.{name}.bias"].zero_()
    mmdet["roi_head.bbox_head.fc_cls.bias"][k] = 10.0
    mmdet["roi_head.mask_head.conv_logits.weight"].zero_()
    mmdet["roi_head.mask_head.conv_logits.bias"].fill_(-10.0)[k] = 10.0
    path = tmp_path / "mask_rcnn_mmdet.pth"
    torch.save({"meta": {"CLASSES": ("a", "b", "c"), "epoch": 36}, "state_dict": mmdet}, path)
    model = load_detection_checkpoint(small_detector(), path).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])[0]
    assert len(out["labels"]) > 0 and (out["labels"] == k + 1).all()
    assert (out["scores"] > 0.99).all()
    assert (out["masks"] > 0.5).any()  # the mask of class k, not the background's slot


def test_a_lightning_checkpoint_of_the_detector_loads_as_a_whole(tmp_path):
    # MaskRCNNDetector stores the detector as `net.`, next to other state (metrics); only `net.*` is the network.
    source = small_detector()
    state = {f"net.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "detector.ckpt"
    torch.save({"state_dict": {**state, "val_map.extra": torch.zeros(1)}, "epoch": 3}, path)
    model = load_detection_checkpoint(small_detector(), path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_checkpoint_of_another_detector_is_one_sentence(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": mmdet_state_dict("convnext_atto", num_classes=5)}, path)
    with pytest.raises(
        UserError, match=r"does not fit this detector: 'roi_heads.box_predictor.cls_score.weight'"
    ):
        load_detection_checkpoint(small_detector(), path)


# ------------------------------------------------------------------------------------------------- layer ids
def official_get_num_layer_layer_wise(var_name, num_max_layer=12):
    """Verbatim from facebookresearch/ConvNeXt object_detection/mmcv_custom/layer_decay_optimizer_constructor.py."""
    if var_name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed"):
        return 0
    elif var_name.startswith("backbone.downsample_layers"):
        stage_id = int(var_name.split(".")[2])
        if stage_id == 0:
            layer_id = 0
        elif stage_id == 1:
            layer_id = 2
        elif stage_id == 2:
            layer_id = 3
        elif stage_id == 3:
            layer_id = num_max_layer
        return layer_id
    elif var_name.startswith("backbone.stages"):
        stage_id = int(var_name.split(".")[2])
        block_id = int(var_name.split(".")[3])
        if stage_id == 0:
            layer_id = 1
        elif stage_id == 1:
            layer_id = 2
        elif stage_id == 2:
            layer_id = 3 + block_id // 3
        elif stage_id == 3:
            layer_id = num_max_layer
        return layer_id
    else:
        return num_max_layer + 1


def test_layer_ids_and_lr_scales_are_the_official_ones_for_tiny():
    with torch.device("meta"):
        model = create_mask_rcnn("convnext_tiny", num_classes=80)
    ids = detector_layer_ids(model, "layer_wise", num_layers=6)
    # The official function reads mmdet names: take each parameter's name through the key map.
    names = {
        name: next(iter(torchvision_mask_rcnn_to_mmdet({name: p}))) for name, p in model.named_parameters()
    }
    assert ids == {name: official_get_num_layer_layer_wise(names[name], 6) for name in ids}
    assert sorted(set(ids.values())) == list(range(8))
    lr, decay = 1e-4, 0.95
    optimizer = build_optimizer(model, lr, 0.05, layer_decay=decay, layer_ids=ids, default_id=7)
    for group in optimizer.param_groups:
        # official: scale = decay_rate ** (num_layers - layer_id - 1) with num_layers = 6 + 2
        assert group["lr"] == pytest.approx(lr * decay ** (6 + 2 - group["layer_id"] - 1))
        assert group["weight_decay"] == (0.0 if all(p.ndim == 1 for p in group["params"]) else 0.05)


@pytest.mark.slow  # two gloo processes
def test_ap_gathered_from_ranks_holding_uneven_numbers_of_images_equals_one_process():
    """5 images on 2 ranks (3 and 2, as EveryImageOnce splits them): torchmetrics' own gather expects as many
    images on every rank and the DDP run failed in gloo; the gathered AP is one process's, ties in scores and all."""
    result = json.loads(run_python([str(Path(__file__).with_name("uneven_ap_ranks.py"))], timeout=120).stdout)
    assert result["two"] == result["one"]
    assert 0.1 < result["one"]["bbox_map"] < 0.9  # a figure that depends on every image, not 0 or 1

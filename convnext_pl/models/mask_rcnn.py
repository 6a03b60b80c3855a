"""Mask R-CNN (and Faster R-CNN) with a ConvNeXt backbone, on torchvision's detection models.

The detector of the paper's COCO table (docs/paper.md §6; official ``object_detection/configs/convnext/
mask_rcnn_convnext_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco_in1k.py`` on mmdet 2.x) has exactly the
structure of torchvision's ``maskrcnn_resnet50_fpn`` (v1) with another backbone:

- backbone: :class:`convnext_pl.models.backbone.ConvNeXtBackbone` (four stage maps through ``norm0..3``);
- neck: torchvision's ``FeaturePyramidNetwork``, 256 channels, P2..P5 plus P6 by max pool (``LastLevelMaxPool``,
  mmdet FPN ``num_outs=5`` without extra convs);
- RPN: anchors of size 32..512 at strides 4..64 (mmdet scale 8 x stride), ratios 0.5/1/2, 3x3 conv head;
  1000 proposals per image after NMS in training as in mmdet's ``rpn_proposal.max_per_img`` (torchvision: 2000);
- box branch: 7x7 RoIAlign, two shared 1024-d FC layers (mmdet ``Shared2FCBBoxHead``), class-specific boxes with
  coder weights (10, 10, 5, 5) = mmdet's target stds (0.1, 0.1, 0.2, 0.2);
- mask branch (absent in Faster R-CNN): 14x14 RoIAlign, four 3x3 convs of 256, 2x2 deconv, per-class 28x28 masks.

Images enter as a list of float (3, H, W) tensors in [0, 1]; the model normalises them (ImageNet mean/std, which
is mmdet's 0-255 ``img_norm_cfg`` divided by 255) and pads the batch to a multiple of 32. In evaluation it also
resizes (shorter side ``min_size``, long side <= ``max_size``) and maps detections back to the input size; in
training the data pipeline has already resized (multi-scale, see ``convnext_pl/data/detection/coco.py``), so it does not.
The differences that remain to mmdet are listed in docs/detection.md.
"""

from collections import OrderedDict

import torch
import torch.nn as nn
from jsonargparse.typing import ClosedUnitInterval, PositiveInt
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from convnext_pl.errors import UserError
from convnext_pl.models.backbone import ConvNeXtBackbone, create_backbone
from convnext_pl.models.registry import DropPathRate
from convnext_pl.ranges import LeftOpenUnitInterval

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # mmdet img_norm_cfg mean (123.675, 116.28, 103.53) / 255
IMAGENET_STD = (0.229, 0.224, 0.225)  # mmdet img_norm_cfg std (58.395, 57.12, 57.375) / 255
FPN_CHANNELS = 256
COCO_CLASSES = 80


class ConvNeXtFPN(nn.Module):
    """The ConvNeXt backbone (``body``) followed by torchvision's FPN (``fpn``), as torchvision's detectors expect.

    torchvision's ``BackboneWithFPN`` takes the maps out of a network by module name; ``ConvNeXtBackbone`` returns
    them itself, so this small module only names them ``"0".."3"`` (the RoI poolers' ``featmap_names``).

    Args:
        body: the backbone returning four stage maps.
        out_channels: FPN channels (official 256).
    """

    def __init__(self, body: ConvNeXtBackbone, out_channels: int = FPN_CHANNELS):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            list(body.out_channels), out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        """(N, 3, H, W) -> {"0": P2, "1": P3, "2": P4, "3": P5, "pool": P6}, each (N, 256, H / s, W / s)."""
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's normalise-resize-batch step, resizing only in evaluation.

    In training torchvision would resize every image again to ``min_size``, undoing the multi-scale augmentation
    of the data pipeline; mmdet resizes in the pipeline only, and so does this project.
    """

    def resize(self, image: torch.Tensor, target: dict | None = None):
        if self.training:
            return image, target
        return super().resize(image, target)


def create_mask_rcnn(
    backbone: str = "convnext_tiny",
    num_classes: int | None = None,
    masks: bool = True,
    drop_path_rate: DropPathRate = 0.0,
    min_size: PositiveInt = 800,
    max_size: PositiveInt = 1333,
    fpn_channels: PositiveInt = FPN_CHANNELS,
    representation_size: PositiveInt = 1024,
    rpn_post_nms_top_n_train: PositiveInt = 1000,
    rpn_post_nms_top_n_test: PositiveInt = 1000,
    box_batch_size_per_image: PositiveInt = 512,
    box_detections_per_img: PositiveInt = 100,
    box_score_thresh: ClosedUnitInterval = 0.05,
    box_nms_thresh: LeftOpenUnitInterval = 0.5,
    **backbone_options,
) -> GeneralizedRCNN:
    """Mask R-CNN (or Faster R-CNN with ``masks=False``) with a ConvNeXt backbone (see the module docstring).

    The defaults are the official detector's; the sizes after ``max_size`` exist to shrink it for CPU runs.

    Args:
        backbone: any hierarchical model of :func:`convnext_pl.models.list_models` (``convnext_tiny``,
            ``convnextv2_atto``, ...).
        num_classes: object classes without the background; None: COCO's 80. The heads get one more output
            (torchvision's background class 0). From the CLI it follows the data's categories.
        masks: Mask R-CNN when True, Faster R-CNN (no mask branch) when False.
        drop_path_rate: the backbone's stochastic depth (official Mask R-CNN T: 0.4).
        min_size: shorter side images are resized to in evaluation (official 800).
        max_size: longest side in evaluation (official 1333).
        fpn_channels: FPN, RPN and mask-head channels (official 256).
        representation_size: width of the two shared FC layers of the box head (official 1024).
        rpn_post_nms_top_n_train: proposals kept per training image (mmdet 2.x ``rpn_proposal.max_per_img`` 1000).
        rpn_post_nms_top_n_test: proposals kept per test image (mmdet ``rpn.max_per_img`` 1000).
        box_batch_size_per_image: RoIs sampled per training image for the box head (mmdet sampler 512).
        box_detections_per_img: detections kept per image (mmdet ``max_per_img`` 100).
        box_score_thresh: detections below this score are dropped (mmdet ``test_cfg.rcnn.score_thr`` 0.05).
        box_nms_thresh: IoU above which the box head's NMS suppresses a detection, per class (mmdet
            ``test_cfg.rcnn.nms.iou_threshold`` 0.5).
        **backbone_options: passed to :func:`convnext_pl.models.backbone.create_backbone`
            (``layer_scale_init_value``, ``patch_size``, ...).
    """
    if min_size > max_size:  # a relation, which types cannot say
        raise UserError(
            f"model.init_args.net.init_args.min_size {min_size} is above max_size {max_size}: the evaluation resize "
            "takes the shorter side to min_size and caps the longer at max_size; give min_size <= max_size"
        )
    num_classes = COCO_CLASSES if num_classes is None else num_classes
    body = create_backbone(backbone, drop_path_rate=drop_path_rate, **backbone_options)
    heads = dict(
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),  # 7x7 RoIAlign, two shared FCs
        box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
    )
    if masks:  # four 3x3 convs, a 2x2 deconv, per-class 28x28 logits (mmdet FCNMaskHead)
        heads["mask_head"] = MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, dilation=1)
        heads["mask_predictor"] = MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1)
    model = (MaskRCNN if masks else FasterRCNN)(
        ConvNeXtFPN(body, fpn_channels),
        num_classes=None,  # given by the predictors; torchvision counts the background as class 0
        min_size=min_size,
        max_size=max_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_batch_size_per_image=box_batch_size_per_image,
        box_detections_per_img=box_detections_per_img,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        **heads,
    )
    model.transform = DetectionTransform(min_size, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD))
    model.num_classes = num_classes
    return model


def count_detector_macs(
    model: MaskRCNN | FasterRCNN,
    height: int = 800,
    width: int = 1280,
    proposals: int = 1000,
    detections: int = 100,
) -> int:
    """Multiply-adds of one image through the detector, counted as mmdet's ``get_flops.py`` counts them.

    mmdet counts ``forward_dummy``: backbone, FPN and RPN head on the image, the box head on ``proposals`` RoIs
    and the mask head on the first ``detections`` of them. That fixes what a real forward leaves to the image
    (how many proposals survive NMS, how many detections pass the score threshold), so the same is done here
    with ``torch.utils.flop_counter`` (halved, see ``flops.count_macs``). RoIAlign, NMS and the norms are not
    counted, as in mmdet's counter. Official ConvNeXt-T Mask R-CNN at 1280x800: 262G.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(1, 3, height, width, device=device)
    sizes = [(height, width)]
    # Any boxes inside the image: the counts depend on their number only. (x1, y1) in the top-left quarter.
    corner = torch.rand(proposals, 2, device=device) * torch.tensor([width / 2, height / 2], device=device)
    boxes = torch.cat([corner, corner + torch.tensor([width / 2, height / 2], device=device)], dim=1)
    heads = model.roi_heads
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            features = model.backbone(x)
            model.rpn.head(list(features.values()))
            heads.box_predictor(heads.box_head(heads.box_roi_pool(features, [boxes], sizes)))
            if heads.has_mask():
                mask_features = heads.mask_roi_pool(features, [boxes[:detections]], sizes)
                heads.mask_predictor(heads.mask_head(mask_features))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2

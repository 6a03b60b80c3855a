"""COCO AP over ranks that evaluated different numbers of images.

Each validation image is evaluated on one rank (``data/resumable.EveryImageOnce``), so with N images on R ranks
some ranks hold one image more. torchmetrics' ``MeanAveragePrecision`` gathers its per-image list states one
tensor at a time and interleaves the ranks' mask lists by position: both assume every rank holds as many images,
which Lightning's padding ``DistributedSampler`` ensures by evaluating repeated images twice. With uneven ranks
the gathers do not line up (the job fails in gloo/NCCL). Written here because torchmetrics offers no other gather
for these states; the AP itself is torchmetrics' (pycocotools backend).
"""

from typing import Any

import torch
import torch.distributed as dist
from lightning_utilities.core.apply_func import apply_to_collection
from torchmetrics.detection import MeanAveragePrecision


class EvenlyGatheredMeanAveragePrecision(MeanAveragePrecision):
    """``MeanAveragePrecision`` whose states are gathered as each rank's whole lists, then put back in the data
    set's order.

    A rank's states (boxes, scores, labels, masks of its images, detections and ground truth alike) travel as one
    object (``all_gather_object``, on the CPU), so any number of images per rank gathers in one collective and
    detections stay aligned with their ground truth. Rank ``r`` evaluated images ``r, r + R, ...``: taking one
    image from each rank in turn restores the order one process would see, which matters because pycocotools
    breaks ties between equal scores by image order. The result equals one process evaluating every image.
    """

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any | None = None) -> None:
        group = process_group or self.process_group
        states = {attr: getattr(self, attr) for attr in self._defaults}
        states = apply_to_collection(states, torch.Tensor, lambda tensor: tensor.cpu())
        gathered: list[Any] = [None] * dist.get_world_size(group=group)
        dist.all_gather_object(gathered, states, group=group)
        for attr in self._defaults:
            lists = [rank_states[attr] for rank_states in gathered]
            longest = max(len(items) for items in lists)
            setattr(self, attr, [items[i] for i in range(longest) for items in lists if i < len(items)])

"""Layer ids for layer-wise learning-rate decay, derived from any stage depths.

The official ConvNeXt fine-tuning code hard-codes a table for depths (3, 3, 27, 3) and refuses other depths.
The rule below generalises it: every stage is cut into groups of ``min(depths)`` consecutive blocks, each
group is one layer id, the stem is id 0, a stage's downsampling layer shares the id of that stage's first
group, and the final norm and head come last. For (3, 3, 27, 3) this is exactly the official table
(stem 0; stage 0 -> 1; stage 1 -> 2; stage 2 block j -> 3 + j // 3; stage 3 -> 12; head 13).
"""

import math
from collections.abc import Sequence


def block_layer_ids(depths: Sequence[int]) -> tuple[list[list[int]], int]:
    """Layer id of every block, stage by stage, and the id of the head.

    Args:
        depths: number of blocks in each stage.

    Returns:
        ``(ids, head_id)`` where ``ids[i][j]`` is the layer id of block ``j`` of stage ``i``.
    """
    group = max(1, min(depths))
    ids, next_id = [], 1  # id 0 is the stem
    for depth in depths:
        ids.append([next_id + j // group for j in range(depth)])
        next_id += math.ceil(depth / group)
    return ids, next_id

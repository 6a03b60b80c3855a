"""Run by ``test_detection.py`` in a fresh interpreter: COCO box and mask AP of 5 images on one process, and on two
gloo ranks holding 3 and 2 of them (``EveryImageOnce``'s split), through ``EvenlyGatheredMeanAveragePrecision``.
Prints ``{"one": {...}, "two": {...}}`` (rank 0's result) as JSON."""

import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from convnext_pl.tasks.detection_ap import EvenlyGatheredMeanAveragePrecision

KEYS = ("bbox_map", "bbox_map_50", "segm_map")


def _mask(boxes: torch.Tensor, size: int = 100) -> torch.Tensor:
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.round().int().tolist(), strict=True):
        mask[y1:y2, x1:x2] = True
    return masks


def images() -> list[tuple[dict, dict]]:
    """(prediction, ground truth) per image: two objects, detected less and less well from image to image."""
    generator, pairs = torch.Generator().manual_seed(0), []
    truth_boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 20.0, 90.0, 70.0]])
    for i in range(5):
        boxes = (truth_boxes + torch.rand(2, 4, generator=generator) * 6 * i).clamp(0, 99)
        prediction = {"boxes": boxes, "scores": torch.tensor([0.9, 0.3 + 0.1 * i]), "labels": torch.tensor([1, 2]),
                      "masks": _mask(boxes)}  # fmt: skip
        truth = {"boxes": truth_boxes, "labels": torch.tensor([1, 2]), "masks": _mask(truth_boxes)}
        pairs.append((prediction, truth))
    return pairs


def _ap(pairs: list[tuple[dict, dict]]) -> dict:
    metric = EvenlyGatheredMeanAveragePrecision(iou_type=("bbox", "segm"), backend="pycocotools")
    for prediction, truth in pairs:
        metric.update([prediction], [truth])
    result = metric.compute()
    return {key: float(result[key]) for key in KEYS}


def _rank(rank: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    result = _ap(images()[rank::2])  # rank 0: images 0, 2, 4; rank 1: images 1, 3
    if rank == 0:
        queue.put(result)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_rank, args=(free_port, results), nprocs=2, start_method="spawn")
    json.dump({"one": _ap(images()), "two": results.get()}, sys.stdout)
